"""A run's configuration key: its Hydra overrides except the seed (and settings that do not change the
result, such as paths, threads or loggers), sorted. Seeds of one configuration share the key, so the
comparison command and W&B can group them.
"""

from __future__ import annotations

from pathlib import Path

import yaml

# Overrides that name where or how a run is done, not what is trained (data.path as in
# hydra.job.config.override_dirname; the comparison checks that paired runs scored the same queries).
IGNORED = ("seed", "threads", "ckpt_path", "data.path", "paths.", "hydra.", "logger", "callbacks", "trainer.enable_progress_bar", "trainer.enable_model_summary", "data.cache_dir", "data.num_workers")


def config_key(overrides: list[str]) -> str:
    """``"a=1 b=2"`` from Hydra override strings, without the seed and the IGNORED keys; "(defaults)" if none is left."""
    kept = []
    for override in overrides:
        name = override.lstrip("+~").split("=", 1)[0]
        if any(name.startswith(i) if i.endswith(".") else name == i or name.startswith(i + ".") for i in IGNORED):
            continue
        kept.append(override)
    return " ".join(sorted(kept)) or "(defaults)"


def run_overrides(run_dir: str | Path) -> list[str]:
    """The overrides Hydra saved in ``run_dir/.hydra/overrides.yaml`` ([] if there are none)."""
    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    return list(yaml.safe_load(path.read_text()) or []) if path.is_file() else []


def current_config_key() -> str | None:
    """The key of the running Hydra job (None outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return config_key(list(HydraConfig.get().overrides.task))
