"""Plugin manager: entry points, -p / -p no:, environment, attribution, duplicate and misspelt hooks."""

import types

import pytest

from modulm import hookimpl, plugins
from modulm.errors import ModulmError
from modulm.plugins import PluginError
from modulm.registry import RegistryError
from tests.fakes import ToyPlugin

BUILTINS = {"transformer", "optim", "bpe", "data", "loggers"}


def test_builtins_come_from_the_modulm_entry_point_group():
    from importlib import metadata

    declared = {ep.name for ep in metadata.entry_points(group="modulm") if ep.dist.metadata["name"] == "modulm"}
    assert BUILTINS <= declared
    pm = plugins.load(env={})
    for name in BUILTINS:
        assert pm.has_plugin(name)
        assert pm.dist_of(name)[0] == "modulm"


def test_autoload_can_be_disabled_by_env_and_argument():
    assert not plugins.load(env={"MODULM_DISABLE_PLUGIN_AUTOLOAD": "1"}).get_plugins()
    assert not plugins.load(autoload=False, env={}).get_plugins()


def test_block_a_builtin_with_p_no():
    pm = plugins.load(["no:loggers"], env={})
    assert not pm.has_plugin("loggers") and pm.has_plugin("optim")


def test_p_imports_a_module_and_env_adds_more(tmp_path, monkeypatch):
    (tmp_path / "extra_plugin_mod.py").write_text(
        "from modulm import hookimpl\n"
        "def geglu(*, d_model, d_ff=None):\n    '''Gated GELU.'''\n    return 'geglu'\n"
        "@hookimpl\ndef modulm_register_components(registry):\n    registry.ffn('acme-geglu', geglu)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = plugins.load(autoload=False, env={"MODULM_PLUGINS": "extra_plugin_mod"})
    component = pm.registry.get("ffn", "acme-geglu")
    assert component.plugin == "extra_plugin_mod" and component.doc == "Gated GELU."
    assert plugins.load(["extra_plugin_mod"], autoload=False, env={}).registry.names("ffn") == ["acme-geglu"]
    with pytest.raises(PluginError, match="-p not_a_module_xyz: cannot import"):
        plugins.load(["not_a_module_xyz"], autoload=False, env={})


def test_late_registration_is_historic_and_attributed_and_unregister_removes():
    pm = plugins.load(autoload=False, env={})
    plugin = ToyPlugin()
    pm.register(plugin, "toy")
    assert pm.registry.get("model", "toy").plugin == "toy"
    pm.unregister(plugin)
    assert ("model", "toy") not in pm.registry


def test_duplicate_name_names_both_plugins():
    pm = plugins.load(autoload=False, env={})
    pm.register(ToyPlugin(), "first")
    with pytest.raises(RegistryError, match="registered twice: by plugin 'first' and by plugin 'second'"):
        pm.register(ToyPlugin(), "second")
    assert not pm.has_plugin("second")
    assert pm.registry.get("model", "toy").plugin == "first"


def test_misspelt_hook_is_rejected():
    module = types.ModuleType("typo_plugin")

    @hookimpl
    def modulm_register_component(registry):  # missing "s"
        pass  # never called: loading must fail on the name alone

    module.modulm_register_component = modulm_register_component
    pm = plugins.load(autoload=False, env={})
    with pytest.raises(PluginError, match="typo_plugin.*unknown hook 'modulm_register_component'"):
        pm.register(module, "typo_plugin")


def test_unknown_component_lists_alternatives_with_plugins():
    pm = plugins.load(autoload=False, env={})
    pm.register(ToyPlugin(), "toy")
    with pytest.raises(ModulmError, match=r"unknown model component 'tyo' \(did you mean 'toy'\?\); available: toy \(toy\)"):
        pm.registry.get("model", "tyo")


def test_no_global_manager_each_load_is_isolated():
    a, b = plugins.load(autoload=False, env={}), plugins.load(autoload=False, env={})
    a.register(ToyPlugin(), "toy")
    assert ("model", "toy") in a.registry and ("model", "toy") not in b.registry
