"""umlroot's kernel patches: shipped, well-formed, part of the build id."""

from __future__ import annotations

from pathlib import Path

from umlroot.kernel import fragment, patches

# Code that only a UML kernel builds: the patches cannot change anything else.
UML_ONLY = ("b/arch/um/", "b/arch/x86/um/", "b/fs/hostfs/")


def test_patches_are_shipped_and_touch_only_uml_code() -> None:
    shipped = patches.shipped_patches()
    assert [p.name for p in shipped] == sorted(p.name for p in shipped)
    assert shipped, "the seccomp spin patch is expected"
    for patch in shipped:
        text = patch.text.decode()
        touched = [line.split()[1] for line in text.splitlines() if line.startswith("+++ ")]
        assert touched and all(path.startswith(UML_ONLY) for path in touched), touched
        assert "@@ " in text


def test_build_id_covers_fragment_and_patches() -> None:
    text = fragment.fragment_text()
    shipped = patches.shipped_patches()
    with_patches = patches.build_id(text)
    assert with_patches == patches.build_id(text, shipped)
    assert with_patches != patches.build_id(text, [])
    changed = [patches.Patch(shipped[0].name, shipped[0].text + b"\n")]
    assert patches.build_id(text, changed) != patches.build_id(text, shipped[:1])
    # Comments in the fragment do not change it, options do.
    assert patches.build_id(text + "\n# a comment\n") == with_patches
    assert patches.build_id(text + "CONFIG_CRAMFS=y\n") != with_patches


def test_patch_command_is_a_list() -> None:
    assert patches.patch_command(Path("/w/x.patch")) == [
        "patch", "-p1", "--forward", "--batch", "-i", "/w/x.patch"]
