# Two-stage Deformable DETR (with box refinement): the encoder proposes boxes at every token
# and the top 300 become the decoder's queries and reference boxes.
_base_ = './deformable-detr-refine_r50_16xb2-50e_coco.py'

model = dict(
    query_generator=dict(
        _delete_=True, type='TwoStageProposals', num_queries=300, embed_dims=256,
        num_classes=80),
    bbox_head=dict(init_wh_bias=0.0))
