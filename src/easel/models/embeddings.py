"""Textual-inversion embeddings (A1111's `embeddings` folder): find the ones a prompt names,
load each once per base model, and say how many tokens they take.

A1111's convention: an embedding applies wherever its name (the file name without suffix)
appears as a word in the prompt or the negative prompt, in any syntax. easel matches names
as words (case-insensitively, as CLIP's lower-casing tokenizer makes A1111 do) and, for
encoding, replaces each with the embedding's own token `easelti<12 hex of its sha256>`:

- the token is what diffusers' `load_textual_inversion` adds to the cached tokenizer(s) (with
  rows in the text encoder's embedding matrix; a multi-vector embedding adds `tok`, `tok_1`,
  ...). A token that cannot occur in ordinary text keeps every prompt without the embedding
  tokenized, and so drawn, exactly as before (the name itself as an added token would split
  longer words that contain it: "art" inside "artist");
- it is named by the file's content, so the same file under two names loads once, and a file
  changed under the same name loads as a new token: the old vectors stay in the tokenizer but
  no prompt reaches them any more, and the prompt encoder's cache (keyed by the prompt text
  after the replacement) cannot return an encoding made with them.

Multi-vector tokens are expanded by the pipelines' own `maybe_convert_prompt` on their path and
by `MultiVectorTokens` (Compel's textual-inversion hook, on token ids) on Compel's, so both
paths see the same ids. Token counts count every vector, as A1111 does.

Files: `.safetensors` with `emb_params` (A1111, SD 1.x/2.x), `clip_l` + `clip_g` (SDXL) or one
tensor under any key (diffusers' `<concept>` files); `.pt`/`.bin` read with torch's weights-only
loading (`torch.load(weights_only=True)`: tensors and plain containers, never code), with
A1111's classic `string_to_param` layout or the same keys. Anything else is refused naming the
file. Loaded embeddings are never unloaded (a few kilobytes each).
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from easel.errors import InvalidRequest

SUFFIXES = (".safetensors", ".pt", ".bin")
LOADED_KEY = "embeddings"  # in LoadedModel.state: token -> EmbeddingFile loaded into its tokenizers
ACTIVE_KEY = "active_embeddings"  # in LoadedModel.state: lower-case name -> (token, vectors) this run
TOKEN_PREFIX = "easelti"
SD_KEY = "vectors"  # the vectors of a one-text-encoder (SD 1.x/2.x) embedding
SDXL_KEYS = ("clip_l", "clip_g")
# text width of the vectors -> the family whose text encoder reads it
WIDTH_FAMILIES = {768: "sd15", 1024: "sd2"}
COUNT_PLACEHOLDER = "a"  # one CLIP token: stands for one vector when counting with a bare tokenizer


class EmbeddingError(ValueError):
    """A file that is not a textual-inversion embedding easel can read; the message says why."""


@dataclass(frozen=True)
class EmbeddingInfo:
    """What an embedding file holds, read without loading any model: vectors per prompt
    position and their width per text encoder (SD_KEY, or SDXL's clip_l and clip_g)."""

    vectors: int
    widths: tuple[tuple[str, int], ...]

    @property
    def width(self) -> int:
        """The text width (SDXL: clip_l + clip_g, as A1111 gives an SDXL embedding's shape)."""
        return sum(width for _, width in self.widths)

    @property
    def family(self) -> str:
        keys = {key for key, _ in self.widths}
        if keys == set(SDXL_KEYS):
            return "sdxl"
        return WIDTH_FAMILIES.get(self.width, f"text width {self.width}")


@dataclass(frozen=True)
class EmbeddingFile:
    """An embedding a prompt names: its name, where it is, its sha256 and what it holds."""

    name: str
    path: Path
    sha256: str
    info: EmbeddingInfo
    field: str  # the request field that names it first (prompt or negative_prompt)

    @property
    def token(self) -> str:
        return f"{TOKEN_PREFIX}{self.sha256[:12]}"

    @property
    def a1111_hash(self) -> str:
        """What A1111 writes in `TI hashes`: the first 12 hex of the file's sha256."""
        return self.sha256[:12]


# -- finding --------------------------------------------------------------------------------


def embedding_files(folder: Path) -> dict[str, Path]:
    """name (file name without suffix, as A1111 names them; subfolders searched) -> path of
    the embedding files under `folder`; the first in sorted order wins a duplicate name."""
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in SUFFIXES:
            found.setdefault(path.stem, path)
    return found


def _pattern(names: Iterable[str]) -> re.Pattern[str] | None:
    """Any of `names` as a whole word (longest first, so `bad-hands-5` wins over `bad`)."""
    ordered = sorted(set(names), key=lambda name: (-len(name), name))
    if not ordered:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, ordered)) + r")(?!\w)", re.IGNORECASE)


def names_in(texts: Iterable[tuple[str, str]], names: Iterable[str]) -> list[tuple[str, str]]:
    """(name, field) of each of `names` the (field, text) pairs mention as a word, in order of
    first mention."""
    by_lower = {name.lower(): name for name in names}
    pattern = _pattern(by_lower.values())
    found: dict[str, str] = {}
    if pattern is None:
        return []
    for field, text in texts:
        for match in pattern.finditer(text or ""):
            found.setdefault(by_lower[match.group(0).lower()], field)
    return list(found.items())


def replace_names(text: str, replacements: Mapping[str, str]) -> str:
    """`text` with each word that is a name in `replacements` (lower-case keys) replaced."""
    pattern = _pattern(replacements)
    if pattern is None or not text:
        return text
    return pattern.sub(lambda match: replacements[match.group(0).lower()], text)


def for_encoding(text: str, active: Mapping[str, tuple[str, int]]) -> str:
    """The prompt the text encoders see: each embedding's name replaced by its token."""
    return replace_names(text, {name: token for name, (token, _) in active.items()})


def for_counting(text: str, active: Mapping[str, tuple[str, int]], *, tokens: bool = True) -> str:
    """The prompt with each embedding's name written out as one token per vector: its loaded
    tokens (`tok tok_1 ...`, for a tokenizer that has them) or placeholder words (for one that
    does not), so counting the text counts every vector."""

    def spelled(token: str, vectors: int) -> str:
        if not tokens:
            return " ".join([COUNT_PLACEHOLDER] * vectors)
        return " ".join([token, *(f"{token}_{index}" for index in range(1, vectors))])

    return replace_names(text, {name: spelled(token, n) for name, (token, n) in active.items()})


def counted_embeddings(text: str, folder: Path) -> dict[str, tuple[str, int]]:
    """The embeddings `text` names, as for_counting takes them (lower-case name -> (no token,
    vectors)), read from their files only; an unreadable one counts as the text it is."""
    files = embedding_files(folder)
    counted = {}
    for name, _ in names_in([("prompt", text)], files) if files else []:
        try:
            counted[name.lower()] = ("", describe(files[name]).vectors)
        except EmbeddingError:
            continue
    return counted


# -- reading --------------------------------------------------------------------------------

_INFO_CACHE: dict[tuple[str, int, int], EmbeddingInfo] = {}


def describe(path: Path) -> EmbeddingInfo:
    """Vector count and widths of an embedding file: from a .safetensors header (no tensor
    read), or by weights-only loading a .pt/.bin; remembered per file version. EmbeddingError
    says why a file is not readable."""
    try:
        stat = path.stat()
    except OSError as error:
        raise EmbeddingError(f"cannot be read ({error.strerror or error})") from None
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _INFO_CACHE:
        if path.suffix.lower() == ".safetensors":
            shapes = _normalise(_safetensors_shapes(path), lambda shape: shape)
        else:
            shapes = _normalise(_load_pickle(path), lambda tensor: tuple(tensor.shape))
        _INFO_CACHE[key] = _info(shapes)
    return _INFO_CACHE[key]


def read_vectors(path: Path) -> dict[str, Any]:
    """The embedding's tensors, (vectors, width) each, keyed SD_KEY or clip_l/clip_g."""
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            raw: Any = load_file(str(path), device="cpu")
        except Exception as error:  # a damaged or foreign file
            raise EmbeddingError(f"is not a readable .safetensors file ({_reason(error)})") from None
    else:
        raw = _load_pickle(path)
    tensors = _normalise(raw, lambda tensor: tensor)
    _info({key: tuple(tensor.shape) for key, tensor in tensors.items()})  # shape checks
    return {key: tensor if tensor.dim() == 2 else tensor.reshape(1, -1) for key, tensor in tensors.items()}


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    try:
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > 100_000_000:
                raise ValueError("header too large")
            header = json.loads(handle.read(length))
        return {key: tuple(value["shape"]) for key, value in header.items() if key != "__metadata__"}
    except (OSError, ValueError, KeyError, TypeError, struct.error) as error:
        raise EmbeddingError(f"is not a readable .safetensors file ({_reason(error)})") from None


def _load_pickle(path: Path) -> Any:
    """torch.load with weights_only=True: tensors and plain containers only, never code."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        unsupported = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        why = f" (it needs {unsupported.group(1)})" if unsupported else ""
        raise EmbeddingError(
            f"cannot be read with weights-only loading (torch.load(weights_only=True)){why}; easel "
            "runs no code from embedding files: convert it to .safetensors"
        ) from None
    except Exception as error:  # not a torch file at all, truncated, ...
        raise EmbeddingError(f"is not a readable torch file ({_reason(error)})") from None


def _normalise(raw: Any, value: Any) -> dict[str, Any]:
    """The known layouts -> {SD_KEY: x} or {"clip_l": x, "clip_g": x}; `value` maps each
    tensor (or shape) to what is returned."""
    if isinstance(raw, Mapping) and all(key in raw for key in SDXL_KEYS):
        return {key: value(raw[key]) for key in SDXL_KEYS}
    if isinstance(raw, Mapping) and "string_to_param" in raw:  # A1111's classic .pt
        params = raw["string_to_param"]
        if isinstance(params, Mapping) and params:
            return {SD_KEY: value(params.get("*", next(iter(params.values()))))}
    if isinstance(raw, Mapping) and "emb_params" in raw:  # A1111's .safetensors
        return {SD_KEY: value(raw["emb_params"])}
    if isinstance(raw, Mapping) and len(raw) == 1:  # diffusers: {"<concept>": tensor}
        return {SD_KEY: value(next(iter(raw.values())))}
    if not isinstance(raw, Mapping) and hasattr(raw, "shape"):  # a bare tensor
        return {SD_KEY: value(raw)}
    keys = ", ".join(map(str, list(raw)[:6])) if isinstance(raw, Mapping) else type(raw).__name__
    raise EmbeddingError(
        f"is not a textual-inversion embedding: expected emb_params, clip_l + clip_g, string_to_param "
        f"or a single tensor, found {keys or 'nothing'}"
    )


def _info(shapes: Mapping[str, Any]) -> EmbeddingInfo:
    counts, widths = set(), []
    for key, shape in shapes.items():
        if not isinstance(shape, tuple) or not 1 <= len(shape) <= 2 or not all(shape):
            raise EmbeddingError(f"has a {key} tensor of shape {list(shape)}, not (vectors, width)")
        counts.add(1 if len(shape) == 1 else int(shape[0]))
        widths.append((key, int(shape[-1])))
    if len(counts) != 1:
        raise EmbeddingError(f"has clip_l and clip_g with different vector counts ({sorted(counts)})")
    return EmbeddingInfo(counts.pop(), tuple(widths))


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]


def refusal(file_name: str, path: Path, field: str, why: str) -> InvalidRequest:
    """An InvalidRequest naming the prompt field, the embedding and its file (never a folder)."""
    return InvalidRequest(
        f"invalid {field}: it names the textual-inversion embedding {file_name!r}, whose file "
        f"{path.name} {why}",
        field=field,
        value=file_name,
    )


# -- listing --------------------------------------------------------------------------------


def list_embeddings(folder: Path, cache_file: Path | None = None) -> list[dict[str, Any]]:
    """Every embedding file under `folder`: name, path, vectors, width, family and sha256, or
    the reason it cannot be used (`error`, the others None)."""
    from easel.models.hashing import sha256_of

    entries = []
    for name, path in embedding_files(folder).items():
        entry: dict[str, Any] = {"name": name, "path": str(path)}
        try:
            info = describe(path)
        except EmbeddingError as error:
            entry.update(vectors=None, width=None, family=None, sha256=None, error=f"{path.name} {error}")
        else:
            entry.update(
                vectors=info.vectors,
                width=info.width,
                family=info.family,
                sha256=sha256_of(path, cache_file),
                error=None,
            )
        entries.append(entry)
    return entries


# -- loading --------------------------------------------------------------------------------


def load(pipe: Any, targets: list[tuple[str, Any, Any]], files: list[EmbeddingFile], family: str) -> None:
    """Load each of `files` into each (key, tokenizer, text encoder) of `targets` that lacks
    its token (a tokenizer shared with another pipeline may have it already), after checking
    the file has vectors of the right width for every target."""
    for file in files:
        missing = [target for target in targets if file.token not in target[1].added_tokens_encoder]
        if not missing:
            continue
        widths = dict(file.info.widths)
        for key, _, text_encoder in targets:
            expected = int(text_encoder.get_input_embeddings().weight.shape[-1])
            if key not in widths:
                made_for = "SDXL (clip_l and clip_g)" if SDXL_KEYS[0] in widths else "one text encoder"
                raise refusal(
                    file.name, file.path, file.field, f"is made for {made_for}, not for this {family} model"
                )
            if widths[key] != expected:
                raise refusal(
                    file.name,
                    file.path,
                    file.field,
                    f"holds {widths[key]}-wide vectors ({file.info.family}); this {family} model's text "
                    f"encoder reads {expected}",
                )
        try:
            vectors = read_vectors(file.path)
        except EmbeddingError as error:
            raise refusal(file.name, file.path, file.field, str(error)) from None
        for key, tokenizer, text_encoder in missing:
            pipe.load_textual_inversion(
                vectors[key], token=file.token, tokenizer=tokenizer, text_encoder=text_encoder
            )


class MultiVectorTokens:
    """Compel's textual-inversion hook: each loaded multi-vector token's id followed by the ids
    of its `_1`, `_2`, ... tokens, as diffusers' maybe_convert_prompt expands them in text
    (on ids, so nothing is decoded and tokenized again)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def expand_textual_inversion_token_ids_if_necessary(self, token_ids: list[int]) -> list[int]:
        added = self.tokenizer.added_tokens_encoder
        ours = {i: token for token, i in added.items() if token.startswith(TOKEN_PREFIX)}
        if not ours or not any(i in ours for i in token_ids):
            return token_ids
        expanded: list[int] = []
        for i in token_ids:
            expanded.append(i)
            token = ours.get(i)
            index = 1
            while token is not None and f"{token}_{index}" in added:
                expanded.append(added[f"{token}_{index}"])
                index += 1
        return expanded
