"""Plugin loading: entry points, fault isolation, required/strict/blocked, duplicates, listing."""
from __future__ import annotations

import json
import sys

import pytest

from corecompress import hookimpl
from corecompress.errors import PluginError
from corecompress.plugin.loading import PluginWarning, load_plugins
from tests_shared import fake_distribution


GOOD = """
from corecompress import hookimpl
from dataclasses import dataclass
import torch

@dataclass
class Opts:
    k: int = 1

class Imp:
    def __init__(self, o): self.o = o
    def score(self, model, groups, ctx): return {g.name: torch.ones(g.size) for g in groups}

@hookimpl
def register_importances(register):
    register("{name}", Imp, Opts)
"""


def test_builtins_load_through_entry_points():
    loaded = load_plugins()
    assert loaded.plugins["builtin"].distribution == "corecompress"
    reg = loaded.registry
    assert {"l1", "l2", "random"} <= set(reg.names("importance"))
    assert {"mask", "physical"} <= set(reg.names("applier"))
    assert reg.get("importance", "l1").plugin == "builtin"


def test_third_party_plugin_registers_component(site):
    fake_distribution(site, "thirdparty-good", {"good": GOOD.replace("{name}", "my_importance")})
    loaded = load_plugins()
    comp = loaded.registry.get("importance", "my_importance")
    assert comp.plugin == "good" and comp.distribution == "thirdparty-good"


def test_broken_plugin_warns_once_and_tool_survives(site):
    fake_distribution(site, "thirdparty-broken", {"broken": "raise RuntimeError('boom at import')\n"})
    with pytest.warns(PluginWarning, match=r"plugin 'broken' failed to import: RuntimeError: boom at import \(.*"
                                           r"thirdparty_broken_broken.py, line 1; distribution 'thirdparty-broken'\); "
                                           r"it is skipped") as rec:
        loaded = load_plugins()
    assert len([w for w in rec if "broken" in str(w.message)]) == 1
    assert loaded.plugins["broken"].status == "failed"
    assert "l1" in loaded.registry.names("importance")


def test_broken_plugin_is_an_error_when_required_or_strict(site, monkeypatch):
    fake_distribution(site, "thirdparty-broken", {"broken": "import no_such_module_anywhere\n"})
    with pytest.raises(PluginError, match="thirdparty-broken"):
        load_plugins(require=["broken"])
    with pytest.raises(PluginError, match="thirdparty-broken"):
        load_plugins(strict=True)
    monkeypatch.setenv("CORECOMPRESS_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError):
        load_plugins()


def test_plugin_failing_during_registration_is_isolated(site):
    source = """
from corecompress import hookimpl
@hookimpl
def register_schedules(register):
    register("half_registered", lambda: (lambda s, t: 1.0))
@hookimpl
def register_importances(register):
    raise ValueError("cannot register")
"""
    fake_distribution(site, "thirdparty-badreg", {"badreg": source})
    with pytest.warns(PluginWarning, match="register_importances raised ValueError"):
        loaded = load_plugins()
    assert "half_registered" not in loaded.registry.names("schedule")  # nothing of it remains


def test_unknown_hook_is_reported(site):
    source = "from corecompress.plugin.hookspecs import hookimpl\n@hookimpl\ndef register_importancez(register):\n    pass\n"
    fake_distribution(site, "thirdparty-typo", {"typo": source})
    with pytest.warns(PluginWarning, match="thirdparty-typo"):
        loaded = load_plugins()
    assert loaded.plugins["typo"].status == "failed"


def test_duplicate_names_name_both_plugins(site):
    fake_distribution(site, "thirdparty-dup", {"dup": GOOD.replace("{name}", "l1")})
    with pytest.warns(PluginWarning, match=r"importance 'l1' is registered by plugin 'builtin' \(corecompress\) and "
                                           r"plugin 'dup' \(thirdparty-dup\), so it cannot be used"):
        loaded = load_plugins()
    with pytest.raises(PluginError, match="CORECOMPRESS_BLOCK_PLUGINS=dup"):
        loaded.registry.get("importance", "l1")
    with pytest.raises(PluginError, match="registered by plugin 'builtin'"):
        load_plugins(strict=True)


def test_block_by_recipe_and_environment(site, monkeypatch):
    fake_distribution(site, "thirdparty-good", {"good": GOOD.replace("{name}", "my_importance")})
    assert "my_importance" not in load_plugins(block=["good"]).registry.names("importance")
    monkeypatch.setenv("CORECOMPRESS_BLOCK_PLUGINS", "thirdparty-good")
    loaded = load_plugins()
    assert loaded.plugins["good"].status == "blocked"
    assert "my_importance" not in loaded.registry.names("importance")
    with pytest.raises(PluginError, match="blocked"):
        load_plugins(require=["good"])


def test_disable_autoload_loads_only_named(site, monkeypatch):
    fake_distribution(site, "thirdparty-good", {"good": GOOD.replace("{name}", "my_importance")})
    monkeypatch.setenv("CORECOMPRESS_DISABLE_PLUGIN_AUTOLOAD", "1")
    loaded = load_plugins()
    assert loaded.registry.names("importance") == []
    monkeypatch.setenv("CORECOMPRESS_PLUGINS", "builtin")
    assert "l1" in load_plugins().registry.names("importance")
    assert "my_importance" in load_plugins(require=["good"]).registry.names("importance")


def test_plugins_command_lists_components(cli):
    code, out, _err = cli("plugins", "--json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    core = rows["builtin"]
    assert core["distribution"] == "corecompress" and core["version"]
    assert {"kind": "importance", "name": "l1"} in core["components"]
    code, out, _err = cli("plugins")
    assert "importance/l1" in out and "builtin  (corecompress" in out


def test_options_command(cli):
    code, out, _err = cli("options", "schedule", "cosine")
    assert code == 0
    assert "warmup_steps: int = 0" in out and "linear warm-up" in out
    code, _out, err = cli("options", "importance", "l3")
    assert code == 2 and "unknown importance 'l3'" in err
    code, _out, err = cli("options", "importanse", "l1")
    assert code == 2 and "did you mean 'importance'" in err


@pytest.mark.parametrize("old, new", [("face", "facekit"), ("faces", "faces_pruner"), ("core", "builtin"),
                                      ("baselines", "prune_baselines"), ("kd_baselines", "distill_baselines")])
def test_an_old_plugin_name_is_one_line_naming_the_new_one(cli, tmp_path, monkeypatch, old, new):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"version: 1\nname: r\nmodel: tiny_vit\ndata: synthetic_prototypes\nrequire: [{old}]\n")
    code, _out, err = cli("validate", recipe)
    assert code == 2 and err.strip() == f"error: require: plugin '{old}' is now called '{new}'; use that name"
    recipe.write_text(f"version: 1\nname: r\nmodel: tiny_vit\ndata: synthetic_prototypes\nplugins: {{block: [{old}]}}\n")
    code, _out, err = cli("validate", recipe)
    assert code == 2 and f"'{old}' is now called '{new}'" in err
    monkeypatch.setenv("CORECOMPRESS_BLOCK_PLUGINS", old)
    with pytest.raises(PluginError, match=f"CORECOMPRESS_BLOCK_PLUGINS: plugin '{old}' is now called '{new}'"):
        load_plugins()


def test_a_malformed_declaration_skips_only_that_plugin():
    class Bogus:
        @hookimpl
        def register_losses(self, register):
            register("bogus_loss", lambda: None, needs={"bogus"})

    with pytest.warns(PluginWarning, match=r"plugin 'bogus' from distribution '\(in-process\)' was skipped: plugin "
                                           r"'bogus': loss 'bogus_loss': needs unknown 'bogus'"):
        loaded = load_plugins(extra=[("bogus", Bogus())])
    assert loaded.plugins["bogus"].status == "failed" and "bogus_loss" not in loaded.registry.names("loss")
    assert "l1" in loaded.registry.names("importance")  # the others loaded
    with pytest.raises(PluginError, match="needs unknown 'bogus'"):
        load_plugins(extra=[("bogus", Bogus())], strict=True)
