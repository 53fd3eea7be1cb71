"""The public surface is pinned: adding or removing a name is a decision, made here."""

import subprocess
import sys

import batchfit as bf


def test_top_level_names():
    assert sorted(bf.__all__) == sorted([
        "Model", "NotCompiledError", "Sequential", "activations", "callbacks", "data", "layers",
        "load_model", "losses", "metrics", "optimizers", "regularizers"])
    for name in bf.__all__:
        assert hasattr(bf, name)


def test_layer_names():
    assert {"Dense", "Activation", "Dropout", "Flatten", "BatchNormalization", "LayerNormalization",
            "Embedding", "Conv2D", "MaxPooling2D"} <= set(bf.layers.__all__)


def test_callback_names():
    assert sorted(bf.callbacks.__all__) == ["Callback", "CallbackList", "History", "LambdaCallback",
                                            "ProgbarLogger"]


def test_import_does_not_pull_optional_libraries():
    code = ("import sys, batchfit; bad = [m for m in ('matplotlib', 'pandas', 'torch', 'grain', "
            "'tensorflow') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_import_leaves_the_garbage_collector_as_it_found_it():
    """`import batchfit` pauses the collector and files what it imported in the oldest generation
    (batchfit._gc): in a fresh process the collector is back on, nothing is frozen and the
    young generation is empty."""
    code = ("import gc, batchfit; print(gc.isenabled(), gc.get_freeze_count(), len(gc.get_objects(0)), "
            "len(gc.get_objects()))")
    on, frozen, young, tracked = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                                check=True).stdout.split()
    assert (on, frozen) == ("True", "0")
    assert int(young) < 100 < 100_000 < int(tracked)    # paused and only re-enabled: ~300,000 young


def test_the_paused_collector_keeps_frozen_and_disabled_processes_as_they_were():
    import gc

    from batchfit._gc import collector_paused

    class Node:
        pass

    was_enabled = gc.isenabled()
    try:
        gc.disable()
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()                       # off before: still off
        gc.enable()
        with collector_paused():
            assert not gc.isenabled()
            node = Node()
            node.self = node                            # a cycle made while paused
        assert gc.isenabled() and gc.get_freeze_count() == 0
        assert gc.is_tracked(node) and not any(o is node for o in gc.get_objects(generation=0))   # filed as old
        gc.freeze()                                     # a process with frozen objects of its own
        frozen = gc.get_freeze_count()
        with collector_paused():
            assert gc.isenabled()                       # left alone
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
        (gc.enable if was_enabled else gc.disable)()
