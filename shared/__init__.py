"""Code shared by the coordinating center and the hospitals: models, data, privacy, metrics."""

import logging

# Opacus calls logging.basicConfig() when imported (opacus/utils/module_utils.py): a root handler on stderr that
# repeated every Flower record a second time, with a timestamp, in every process that imports it (e.g. "Manually
# terminating ClientAppActor" from each Ray worker). Flower prints through its own handler (FLWR_LOG_LEVEL).
logging.getLogger("flwr").propagate = False
