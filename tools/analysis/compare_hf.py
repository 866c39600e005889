"""Speed of transformers' Deformable DETR vs ours, same converted weights, same inputs.

Usage: python tools/analysis/compare_hf.py [--variant base|refine|refine-twostage]
       [--rounds 5] [--dtype fp32|bf16] [--device cpu|cuda] [--threads N] [--tiny]

Builds transformers' ``DeformableDetrForObjectDetection`` with random weights
(transformers' own ResNet-50, nothing downloaded), converts them with
``mmdeform.converters.hf``, and times both models in alternating rounds:
inference at 512x512 and 800x1067 and one training step (loss + backward) at
512x512 with the same trainable weights (transformers' backbone stages 1-3
unfrozen: see mmdeform.analysis.compare_hf; with --dtype bf16, where both models
and inputs are cast to bfloat16, inference only). Prints medians and ratios.
``--tiny`` uses a small model and small images (a smoke run). Exits with a
message if transformers is not installed.
"""
import argparse
import sys
from pathlib import Path

import torch
from mmengine.config import Config

from mmdeform.analysis.compare_hf import compare_speed, format_comparison, match_trainable
from mmdeform.converters.hf import convert_hf_state_dict, hf_base_config_name, hf_model_overrides
from mmdeform.registry import MODELS

CONFIG_DIR = Path(__file__).resolve().parents[2] / 'configs' / 'deformable_detr'
VARIANTS = {'base': (False, False), 'refine': (True, False), 'refine-twostage': (True, True)}


def build_pair(transformers, variant: str, tiny: bool):
    """(ours, transformers' model) holding the same random weights, dropout 0 in both.

    Both apply dropout functionally (not only through ``nn.Dropout`` modules),
    so a training step draws different random masks unless the rate is 0.
    """
    refine, two_stage = VARIANTS[variant]
    sizes = dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=128,
                 decoder_ffn_dim=128, num_queries=50, two_stage_num_proposals=50) if tiny else {}
    backbone = transformers.ResNetConfig(
        layer_type='basic' if tiny else 'bottleneck', depths=[2, 2, 2, 2] if tiny else
        [3, 4, 6, 3], hidden_sizes=[64, 128, 256, 512] if tiny else [256, 512, 1024, 2048],
        out_features=['stage2', 'stage3', 'stage4'])
    config = transformers.DeformableDetrConfig(
        use_timm_backbone=False, backbone=None, backbone_config=backbone,
        use_pretrained_backbone=False, with_box_refine=refine, two_stage=two_stage,
        num_labels=91, dropout=0.0, **sizes)  # both run the same arithmetic in training
    torch.manual_seed(0)
    hf = transformers.DeformableDetrForObjectDetection(config)
    cfg = Config.fromfile(CONFIG_DIR / f'{hf_base_config_name(config.to_dict())}'
                                       '_r50_16xb2-50e_coco.py')
    cfg.merge_from_dict(dict(model=hf_model_overrides(config.to_dict())))
    ours = MODELS.build(cfg.model)
    ours.load_state_dict(convert_hf_state_dict(hf.state_dict(), config.to_dict()), strict=True)
    return ours, hf


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--variant', choices=sorted(VARIANTS), default='base')
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--dtype', choices=('fp32', 'bf16'), default='fp32')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--threads', type=int, help='torch.set_num_threads (CPU)')
    parser.add_argument('--tiny', action='store_true', help='small model and images')
    args = parser.parse_args(argv)
    try:
        import transformers
    except ImportError:
        sys.exit('compare_hf: transformers is not installed (pip install transformers); '
                 'nothing to compare')
    if args.threads:
        torch.set_num_threads(args.threads)
    ours, hf = build_pair(transformers, args.variant, args.tiny)
    trainable = match_trainable(ours, hf)
    ours.to(args.device)
    hf.to(args.device)
    cases = [('infer', 96, 128), ('train', 96, 128)] if args.tiny else \
        [('infer', 512, 512), ('infer', 800, 1067), ('train', 512, 512)]
    if args.dtype == 'bf16':  # a bf16-cast model is not how either is trained (AMP is)
        cases = [case for case in cases if case[0] == 'infer']
    dtype = torch.bfloat16 if args.dtype == 'bf16' else torch.float32
    results = compare_speed(ours, hf, cases, args.rounds, dtype)
    header = (f'{args.variant}, {args.dtype}, {args.device} ({torch.get_num_threads()} '
              f'threads), transformers {transformers.__version__}, torch {torch.__version__}, '
              f'medians of {args.rounds} alternating rounds, {trainable / 1e6:.2f} M trainable '
              'weights in both')
    print(format_comparison(results, header))


if __name__ == '__main__':
    main()
