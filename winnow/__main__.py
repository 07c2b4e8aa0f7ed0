"""python -m winnow"""
import sys

from winnow.cli import main

sys.exit(main())
