"""pfo: how much private input leaks from split inference.

Stage 1 trains a victim classifier and cuts it into head and tail (``pfo.models``, ``pfo.victim``); stage 2 trains
or imports a StyleGAN2 prior (``pfo.prior``); stage 3 reconstructs inputs from the head's features
(``pfo.attacks``). ``pfo.data`` serves every stage with fixed, disjoint splits.
"""

__version__ = "0.1.0"
