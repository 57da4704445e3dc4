"""Creates the file named by $SC_IMPORT_MARKER when imported: proves a module was (not) loaded."""

import os
from pathlib import Path

Path(os.environ["SC_IMPORT_MARKER"]).touch()
