"""`python -m vl2spike_ros.demo`: the README's demo."""
import sys

from vl2spike_ros.demo.run import main

sys.exit(main())
