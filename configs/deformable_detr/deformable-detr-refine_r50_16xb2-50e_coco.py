# Deformable DETR with iterative bounding box refinement: each decoder layer refines the
# previous layer's boxes with its own box branch (the head then has one class/box branch pair
# per layer; the detector sets that from the decoder).
_base_ = './deformable-detr_r50_16xb2-50e_coco.py'

model = dict(decoder=dict(type='RefineDeformableDecoder'))
