# Two-stage Deformable DETR (with box refinement): the encoder proposes boxes at every token
# and the top num_queries become the decoder's queries and reference boxes.
_base_ = './deformable-detr-refine_r50_16xb2-50e_coco.py'

model = dict(query_generator=dict(type='TwoStageProposals'))
