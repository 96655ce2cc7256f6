"""The public API: what ``import ledrec`` offers, as httpx's test_exported_members does."""

from __future__ import annotations

import subprocess
import sys

import ledrec

PUBLIC = {
    "ArtifactError", "AsyncRecommenderClient", "BadRequest", "ConnectError", "Event",
    "EventError", "EventPublisher", "LedrecError", "Model", "Overloaded", "PublishError",
    "RecommendError", "RecommenderClient", "Recommendations", "RegistryError", "Settings",
    "StackNotRunning", "Timeout", "Unavailable", "__version__", "load_model", "save_model",
}  # fmt: skip


def test_all_lists_exactly_the_public_names() -> None:
    assert set(ledrec.__all__) == PUBLIC
    assert len(ledrec.__all__) == len(PUBLIC)  # no name twice


def test_every_public_name_resolves_and_lives_in_ledrec() -> None:
    for name in ledrec.__all__:
        value = getattr(ledrec, name)
        if name != "__version__":
            assert value.__module__.startswith("ledrec."), name


def test_every_ledrec_exception_derives_from_ledrec_error() -> None:
    errors = [getattr(ledrec, n) for n in ledrec.__all__ if n.endswith("Error")]
    errors += [ledrec.Timeout, ledrec.BadRequest, ledrec.Overloaded, ledrec.Unavailable]
    errors += [ledrec.StackNotRunning]
    for error in errors:
        assert issubclass(error, ledrec.LedrecError), error
    assert issubclass(ledrec.EventError, ValueError)  # older except clauses still hold


def test_importing_ledrec_is_light() -> None:
    code = "import sys, ledrec; print(ledrec.__version__, 'redis' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    version, redis_loaded = out.stdout.split()
    assert version == ledrec.__version__ and redis_loaded == "False"


def test_unknown_names_raise_attribute_error() -> None:
    try:
        ledrec.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as e:
        assert "NoSuchThing" in str(e)
    else:
        raise AssertionError("ledrec.NoSuchThing resolved")


def test_cli_prints_the_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ledrec.cli", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and ledrec.__version__ in out.stdout
