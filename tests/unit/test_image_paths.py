"""`resolve_image` keeps every image read inside the images folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.worker.generators import GenerationError, resolve_image


@pytest.fixture
def images_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "cat.png").write_bytes(b"not checked here")
    return folder


def test_a_plain_name_resolves_inside_the_folder(images_dir: Path) -> None:
    path = resolve_image(images_dir, "cat.png")
    assert path == (images_dir / "cat.png").resolve()
    assert path.read_bytes() == b"not checked here"


def test_a_relative_images_dir_gives_an_absolute_path(
    images_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(images_dir.parent)
    path = resolve_image(Path("images"), "cat.png")
    assert path.is_absolute()
    assert path == (images_dir / "cat.png").resolve()


def test_names_with_spaces_and_unicode_are_allowed(images_dir: Path) -> None:
    (images_dir / "my café 1.png").write_bytes(b"x")
    assert resolve_image(images_dir, "my café 1.png").name == "my café 1.png"


@pytest.mark.parametrize(
    "name",
    [
        "../x",
        "../images/cat.png",
        "/etc/passwd",
        "a/b",
        "..\\x",
        "..",
        ".",
        "",
        "cat\x00.png",
        "cat\n.png",
        "cat\x7f.png",
    ],
)
def test_names_that_are_not_plain_file_names_are_refused(images_dir: Path, name: str) -> None:
    with pytest.raises(GenerationError) as caught:
        resolve_image(images_dir, name)
    assert caught.value.code == "image.not_found"
    assert caught.value.retryable is False
    assert repr(name) in caught.value.message


def test_a_symlink_pointing_outside_the_folder_is_refused(images_dir: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"private")
    (images_dir / "link.png").symlink_to(secret)

    with pytest.raises(GenerationError) as caught:
        resolve_image(images_dir, "link.png")

    assert caught.value.code == "image.not_found"
    assert "outside the images folder" in caught.value.message


def test_a_relative_symlink_climbing_out_is_refused(images_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "secret.png").write_bytes(b"private")
    (images_dir / "link.png").symlink_to(Path("..") / "secret.png")

    with pytest.raises(GenerationError) as caught:
        resolve_image(images_dir, "link.png")

    assert "outside the images folder" in caught.value.message


def test_a_symlink_to_a_file_inside_the_folder_is_followed(images_dir: Path) -> None:
    (images_dir / "alias.png").symlink_to(images_dir / "cat.png")
    assert resolve_image(images_dir, "alias.png") == (images_dir / "cat.png").resolve()


def test_images_dir_itself_behind_a_symlink_still_works(images_dir: Path, tmp_path: Path) -> None:
    linked = tmp_path / "linked-images"
    linked.symlink_to(images_dir, target_is_directory=True)
    assert resolve_image(linked, "cat.png") == (images_dir / "cat.png").resolve()


def test_a_symlink_loop_is_refused_not_crashed(images_dir: Path) -> None:
    os.symlink("loop.png", images_dir / "loop.png")
    with pytest.raises(GenerationError) as caught:
        resolve_image(images_dir, "loop.png")
    assert caught.value.code == "image.not_found"


def test_a_missing_file_names_the_image_and_the_folder(images_dir: Path) -> None:
    with pytest.raises(GenerationError) as caught:
        resolve_image(images_dir, "dog.png")

    assert caught.value.code == "image.not_found"
    assert caught.value.retryable is False
    assert caught.value.message == "no image named 'dog.png' in the images folder"
    assert str(images_dir.resolve()) not in caught.value.message


def test_a_folder_is_not_an_image(images_dir: Path) -> None:
    (images_dir / "sub.png").mkdir()
    with pytest.raises(GenerationError) as caught:
        resolve_image(images_dir, "sub.png")
    assert caught.value.code == "image.not_found"
    assert "not a file" in caught.value.message
