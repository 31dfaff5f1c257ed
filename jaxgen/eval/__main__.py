"""``python -m jaxgen.eval --retrain OUT.msgpack``: retrain the feature network's weights."""
import sys

from jaxgen.eval.lenet_weights import main

sys.exit(main())
