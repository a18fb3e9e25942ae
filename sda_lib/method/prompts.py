"""How an item is put to the LVLM: the text of its text prompt, built from its text fields, and the
sentence beside its image. Two styles:

- "authors" (the default): the authors' templates (RaoZhongtao/SDA: data/beauty/prepare_data.ipynb,
  data/toys/prepare_data.py, data/*/item_prompt.py): a head sentence naming the product kind, then
  `key is value` per field joined by "; ", each value cut to 100 characters with ";" turned into
  "." and newlines into spaces, categories reduced to their first path ("Beauty, Makeup, Nails");
  no instruction. The image is followed by "The <kind> product has the image: ".
- "workbench": `key is value; ` per field plus a one-word-summary instruction, which steers the
  final states towards a compact description (PromptEOL, E5-V); the same instruction beside the
  image.

Both go through the model's chat template (system prompt, generation prompt) as the authors' do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..utils.choices import check_choice, check_fields

PromptStyle = Literal["authors", "workbench"]
CAP = 100  # characters per field value, in both styles
TEXT_INSTRUCTION = "Summarise this product in one word:"
IMAGE_INSTRUCTION = "Summarise this product image in one word:"
# (head, image sentence) as released; the toys script says "beauty" and is kept as released. No
# multimodal sports script was released: its text head is data/sports/item_prompt.py's and its image
# sentence the beauty one's analogue. Other datasets get the neutral analogue.
AUTHORS_SENTENCES = {
    "beauty": ("The beauty item has the following attributes: \n ", "The beauty product has the image: "),
    "toys": ("The beauty product has the following attributes: ", "The beauty product has the image:"),
    "sports": ("The sports item has the following attributes: \n ", "The sports product has the image: "),
}
NEUTRAL_SENTENCES = ("The item has the following attributes: \n ", "The product has the image: ")


def describe(fields: dict[str, str], cap: int = CAP) -> str:
    """`"key is value; "` for each non-empty text field, values stripped and cut to `cap` characters."""
    return "".join(f"{key} is {value[:cap]}; " for key, value in _values(fields))


def authors_attributes(fields: dict[str, str], cap: int = CAP) -> str:
    """The authors' attribute string: first category path, `;` -> `.`, newlines -> spaces, cut to
    `cap`, joined by "; " (their code also drops the last two characters of a cut category string,
    meant for a trailing ", "; that slip is not reproduced)."""
    parts = []
    for key, value in _values(fields):
        if key == "categories":
            value = value.split(" | ")[0].replace(" > ", ", ")  # sda_lib.data.amazon's path format
        parts.append(f"{key} is {value.replace(chr(10), ' ').replace(';', '.')[:cap]}")
    return "; ".join(parts)


@dataclass(frozen=True)
class Prompts:
    """The text of an item's two prompts in one style (see `item_prompts`)."""

    style: PromptStyle = "authors"
    head: str = NEUTRAL_SENTENCES[0]
    image_sentence: str = NEUTRAL_SENTENCES[1]

    def __post_init__(self):
        check_fields(self)

    def text(self, fields: dict[str, str]) -> str:
        if self.style == "workbench":
            return describe(fields) + TEXT_INSTRUCTION
        return self.head + authors_attributes(fields)


def item_prompts(style: PromptStyle = "authors", dataset: str = "") -> Prompts:
    """The prompts of `style` for `dataset` (its head and image sentences, for the authors' style)."""
    check_choice(style, PromptStyle, "prompt style")
    if style == "workbench":
        return Prompts("workbench", "", IMAGE_INSTRUCTION)
    return Prompts("authors", *AUTHORS_SENTENCES.get(dataset, NEUTRAL_SENTENCES))


def _values(fields: dict[str, str]):
    for key, value in fields.items():
        if not isinstance(value, str):
            raise TypeError(
                f"text field {key!r} is {type(value).__name__} ({value!r}), not str; pass only the "
                "item's text fields, with '' where a field is missing"
            )
        if value.strip():
            yield key, value.strip()
