"""Whether W&B logging can start here, asked before any data is loaded (without importing Lightning or torch, so
``two_tower.cli.compare --wandb-project`` asks it cheaply too)."""

from __future__ import annotations

OFFLINE_MODES = ("offline", "dryrun", "disabled")


def wandb_problem(offline: bool = False) -> str | None:
    """Why W&B logging cannot start here, in a line (None: it can), before any data is loaded: the wandb package
    missing (a ModuleNotFoundError traceback when the logger was built, or, offline, a Hydra InstantiationException
    after the data had been tokenized and the model built), ``WANDB_MODE`` not one of W&B's modes (two pydantic
    ValidationError tracebacks), or, online (``offline`` false and ``WANDB_MODE`` not an offline one), no account
    (``wandb login``, or ``WANDB_API_KEY``): W&B asks at the terminal, and elsewhere raised its UsageError when the
    logger first logged, after the data had loaded (a traceback per process, exit 1)."""
    import os
    import typing

    try:
        import wandb
    except ImportError as err:
        return (f"the wandb package cannot be imported ({err}): install it (pip install wandb, a dependency of two-tower), "
                "or log without W&B (logger=csv)")
    mode = os.environ.get("WANDB_MODE")
    if mode is not None and not offline:  # (offline: Lightning's WandbLogger sets WANDB_MODE=dryrun itself)
        try:
            from wandb.sdk.wandb_settings import Settings

            modes = typing.get_args(Settings.model_fields["mode"].annotation) or ("online", *OFFLINE_MODES)
        except Exception:  # another wandb version's settings
            modes = ("online", *OFFLINE_MODES)
        if mode not in modes:
            return f"WANDB_MODE={mode}: not a W&B mode; W&B takes {', '.join(modes)} (offline: log without a network, upload later with `wandb sync`)"
    if offline or mode in OFFLINE_MODES:
        return None
    try:
        wandb.login(verify=False)
    except wandb.errors.UsageError as err:
        return f"{err.message if hasattr(err, 'message') else err} Or log offline, WANDB_MODE=offline (upload later with `wandb sync`)"
    return None


def start_failure(err: Exception, what: str) -> str:
    """The line for a W&B run that could not start (``wandb.init`` raised ``err``; ``what``: the setting that asked for
    it): no network, a wrong WANDB_BASE_URL, ... (W&B waited for its init timeout, then raised CommError tracebacks)."""
    first = " ".join(str(getattr(err, "message", None) or err).split())[:300]
    return (f"{what}: W&B could not start the run: {type(err).__name__}: {first}. Check the network (and WANDB_BASE_URL), "
            "or log offline, WANDB_MODE=offline (upload later with `wandb sync`)")
