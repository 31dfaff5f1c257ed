"""jaxgen benchmarks: ``python -m benchmarks NAME [--quick] [--out DIR]`` (or ``jaxgen bench``)
from the repository root; see :mod:`benchmarks.suite` for the benchmarks and their contract."""
