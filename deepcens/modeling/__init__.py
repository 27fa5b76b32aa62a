"""Models: ResNeSt(+DCN) FPN backbone, small-anchor generator, dense meta-architecture and networks."""
from deepcens.modeling import backbone, anchors, cascade_heads, meta_arch, dense  # noqa: F401  (registrations)
