"""The public surface is pinned: adding or removing a name is a decision, made here."""

import subprocess
import sys

import batchfit as bf


def test_top_level_names():
    assert sorted(bf.__all__) == sorted([
        "Input", "Layer", "Model", "NotCompiledError", "Sequential", "Variable", "activations", "callbacks", "data",
        "distribution", "errors", "initializers", "layers", "load_model", "losses", "metrics", "mixed_precision", "models", "ops", "optimizers", "regularizers",
        "utils"])
    for name in bf.__all__:
        assert hasattr(bf, name)


def test_layer_names():
    assert {"Dense", "Activation", "Dropout", "Flatten", "BatchNormalization", "LayerNormalization",
            "Embedding", "Conv2D", "MaxPooling2D"} <= set(bf.layers.__all__)


def test_callback_names():
    assert sorted(bf.callbacks.__all__) == sorted([
        "Callback", "CallbackList", "History", "LambdaCallback", "ProgbarLogger", "EarlyStopping", "TerminateOnNaN",
        "ReduceLROnPlateau", "LearningRateScheduler", "CSVLogger", "TensorBoard", "ModelCheckpoint",
        "BackupAndRestore", "every_nth"])


def test_import_does_not_pull_optional_libraries():
    code = ("import sys, batchfit; bad = [m for m in ('matplotlib', 'pandas', 'torch', 'grain', "
            "'tensorflow', 'tensorboardX', 'orbax') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _after_import(code: str, env: dict | None = None) -> str:
    import os
    full_env = {**os.environ, **(env or {})}
    full_env.pop("BATCHFIT_COMPILATION_CACHE", None)       # as a user has it: unset
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env=full_env).stdout.split()


def test_import_leaves_the_garbage_collector_as_the_user_set_it():
    """No process-wide override at import: a collector the user switched off or tuned stays so."""
    code = ("import gc; gc.disable(); gc.set_threshold(5000, 20, 20); import batchfit; "
            "print(gc.isenabled(), gc.get_threshold(), gc.get_freeze_count())")
    assert _after_import(code) == ["False", "(5000,", "20,", "20)", "0"]


def test_import_keeps_the_users_compilation_cache_settings(tmp_path):
    """A cache directory the user chose keeps every cache setting as the user set it; without one,
    batchfit's directory is a default, and a minimum compile time the user set is kept."""
    code = ("import jax; jax.config.update('jax_persistent_cache_min_compile_time_secs', 3.0); import batchfit; "
            "print(jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)")
    assert _after_import(code, {"JAX_COMPILATION_CACHE_DIR": str(tmp_path)}) == [str(tmp_path), "3.0"]
    code = "import jax, batchfit; print(jax.config.jax_compilation_cache_dir)"
    assert _after_import(code, {"BATCHFIT_CACHE_DIR": str(tmp_path / "bf")}) == [str(tmp_path / "bf")]
    code = ("import os, jax; os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '2'; "
            "jax.config.update('jax_persistent_cache_min_compile_time_secs', 2.0); import batchfit; "
            "print(jax.config.jax_persistent_cache_min_compile_time_secs)")
    assert _after_import(code, {"BATCHFIT_CACHE_DIR": str(tmp_path / "bf")}) == ["2.0"]
