import os
import sys

# Tests run from a checkout with nothing installed: the package is found at the root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
