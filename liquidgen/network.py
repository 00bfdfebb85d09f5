"""Whether the Hugging Face Hub can be asked at all, asked once and quickly: without this, the
loaders retry for half a minute and print a screen of retry noise when there is no network."""

from __future__ import annotations


def hub_unreachable(repo: str, repo_type: str = "model") -> str | None:
    """Why the Hub cannot be asked about `repo` (offline mode, no connection), or None when it
    answered, whatever it said (a gated or missing repo is reported by the loader)."""
    import logging

    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    quiet = logging.getLogger("huggingface_hub")
    level, quiet.level = quiet.level, logging.ERROR  # its retry warnings are not the user's business
    try:
        HfApi().repo_info(repo, repo_type=repo_type, timeout=10)
    except HfHubHTTPError:
        return None
    except Exception as exc:  # DNS, refused, timed out: any client's connection error
        return (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:120]
    finally:
        quiet.level = level
    return None
