"""sda-workbench: reproduce and extend SDA (structural and disentangled adaptation of LVLMs for
multimodal recommendation)."""

import logging
import sys

__version__ = "0.1.0"


class _CurrentStderr(logging.StreamHandler):
    """Writes to sys.stderr as it is when a message is logged (notebooks and tests replace it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


# The library's messages (what is prepared, reused or resumed, and why) show as plain lines, as
# transformers does for its own: one handler on the package logger, not on the root. Quieten them
# with logging.getLogger("sda_lib").setLevel(logging.WARNING).
_logger = logging.getLogger(__name__)
if not _logger.handlers:
    _handler = _CurrentStderr()
    _handler.setFormatter(logging.Formatter("%(message)s"))
    _logger.addHandler(_handler)
    _logger.setLevel(logging.INFO)
    _logger.propagate = False
