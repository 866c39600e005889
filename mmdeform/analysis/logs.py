"""Finding mmengine's scalar log in a work dir."""
import glob
import os.path as osp


def find_scalar_log(path: str) -> str:
    """The ``scalars.json`` of a run.

    Args:
        path (str): A ``scalars.json`` file, a run folder
            (``<work_dir>/<timestamp>`` holding ``vis_data/scalars.json``) or
            a work dir (its latest run with training losses, else its latest
            run: timestamps sort by time; test runs log no losses).

    Returns:
        str: The log's path.

    Raises:
        FileNotFoundError: nothing found, naming ``path``.
    """
    if osp.isfile(path):
        return path
    if not osp.isdir(path):
        raise FileNotFoundError(f'find_scalar_log: {path} does not exist')
    direct = osp.join(path, 'vis_data', 'scalars.json')
    if osp.isfile(direct):
        return direct
    runs = sorted(glob.glob(osp.join(path, '*', 'vis_data', 'scalars.json')))
    if not runs:
        raise FileNotFoundError(f'find_scalar_log: no vis_data/scalars.json in {path} or its '
                                'run folders (is LocalVisBackend among vis_backends?)')
    with_losses = [run for run in runs if _has_losses(run)]
    return (with_losses or runs)[-1]


def _has_losses(json_file: str) -> bool:
    with open(json_file) as f:
        return any('"loss"' in line for line in f)
