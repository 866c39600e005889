"""Two CPU processes with torchrun (gloo): tools/dist_train.sh then tools/dist_test.sh.

A hang fails within DIST_TIMEOUT_S: a collective waits at most
COLLECTIVE_TIMEOUT_S (``env_cfg.dist_cfg.timeout``), and a run still going at
the limit is killed with all its processes (``run_tool``)."""
import os
import pickle
import re
import sys

from conftest import NUM_TRAIN, NUM_VAL, free_port, run_tool

from mmdeform.testing.process_group import COLLECTIVE_TIMEOUT_S

DIST_TIMEOUT_S = 90  # a whole run: torchrun, start-up of both workers, training
DIST_OPTIONS = ['--cfg-options', f'env_cfg.dist_cfg.timeout={COLLECTIVE_TIMEOUT_S}']


def test_dist_train_and_test_on_cpu(tiny_config, synthetic_workspace, tmp_path, monkeypatch):
    # the scripts call `python`: this interpreter (one thread per process, see tool_env)
    monkeypatch.setenv('PATH', os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH'])
    monkeypatch.setenv('PORT', str(free_port()))
    work_dir = tmp_path / 'work'
    out = run_tool('dist_train.sh', [tiny_config, '2', '--work-dir', str(work_dir),
                                     *DIST_OPTIONS, 'train_cfg.max_epochs=1'],
                   cwd=synthetic_workspace, timeout_s=DIST_TIMEOUT_S)
    assert 'Distributed training: True' in out
    assert f"dist_cfg: {{'backend': 'gloo', 'timeout': {COLLECTIVE_TIMEOUT_S}}}" in out
    # each rank trains on half of the 8 images: 2 iterations of 2 images
    iters = NUM_TRAIN // (2 * 2)
    assert f'Epoch(train) [1][{iters}/{iters}]' in out
    assert f'Epoch(train) [1][{iters + 1}/' not in out
    # the 5 val images are split 3 + 3 (one padded duplicate); rank 0 evaluates each once
    assert f'evaluating {10 * NUM_VAL} detections on {NUM_VAL} images (of {NUM_VAL} ' in out
    assert re.search(r'Epoch\(val\) \[1\]\[2/2\]\s+coco/bbox_mAP: ', out)
    assert (work_dir / 'epoch_1.pth').is_file()
    assert 'terminate called' not in out  # the process group is destroyed before exit

    preds = tmp_path / 'preds.pkl'
    monkeypatch.setenv('PORT', str(free_port()))
    out = run_tool('dist_test.sh', [tiny_config, str(work_dir / 'epoch_1.pth'), '2',
                                    '--work-dir', str(work_dir), '--out', str(preds),
                                    *DIST_OPTIONS], cwd=synthetic_workspace,
                   timeout_s=DIST_TIMEOUT_S)
    assert re.search(r'Epoch\(test\) \[2/2\]\s+coco/bbox_mAP: ', out)
    assert 'terminate called' not in out
    with open(preds, 'rb') as f:
        dumped = pickle.load(f)
    assert sorted(d['img_id'] for d in dumped) == list(range(1, NUM_VAL + 1))


FAKE_SRUN = '''#!/usr/bin/env bash
# stands in for Slurm's srun: records its options, runs the command as task 0 of 1
echo "$@" > "$(dirname "$0")/srun_args"
while [ "$1" != python ]; do shift; done
SLURM_PROCID=0 SLURM_NTASKS=1 SLURM_LOCALID=0 SLURM_NODELIST=node0 exec "$@"
'''
FAKE_SCONTROL = '#!/usr/bin/env bash\necho 127.0.0.1\n'  # `scontrol show hostname node0`


def test_slurm_train_script_on_cpu(tiny_config, synthetic_workspace, tmp_path, monkeypatch):
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    for name, text in (('srun', FAKE_SRUN), ('scontrol', FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv('PATH', os.pathsep.join([str(bin_dir), os.path.dirname(sys.executable),
                                                os.environ['PATH']]))
    monkeypatch.setenv('MASTER_PORT', str(free_port()))
    monkeypatch.setenv('GPUS', '1')
    monkeypatch.setenv('GPUS_PER_NODE', '1')
    work_dir = tmp_path / 'work'
    out = run_tool('slurm_train.sh', ['dev', 'tiny', tiny_config, str(work_dir), *DIST_OPTIONS,
                                      'train_cfg.max_epochs=1', 'train_cfg.val_interval=5'],
                   cwd=synthetic_workspace, timeout_s=DIST_TIMEOUT_S)
    srun_args = (bin_dir / 'srun_args').read_text().split()
    assert srun_args[:2] == ['-p', 'dev'] and '--job-name=tiny' in srun_args
    assert '--ntasks=1' in srun_args and '--launcher=slurm' in srun_args
    assert 'Distributed launcher: slurm' in out and "'backend': 'gloo'" in out
    assert 'Epoch(train) [1][4/4]' in out
    assert (work_dir / 'epoch_1.pth').is_file()
