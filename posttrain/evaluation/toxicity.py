"""A toxicity classifier's probability that a text is toxic: any Hugging Face sequence-classification model.

The default is ToxiGen's RoBERTa classifier (`tomh/toxigen_roberta`), the one Llama 2 scored its ToxiGen
generations with. Which output means "toxic" comes from the model's id2label (see `toxic_index`).
"""

from __future__ import annotations

from dataclasses import dataclass

from posttrain.errors import UserError

CLASSIFIER_ALIASES = {"toxigen_roberta": "tomh/toxigen_roberta"}
TOXIC_WORDS = ("toxic", "hate", "offens")  # word starts: toxicity, hateful, offensive


@dataclass(frozen=True)
class ToxicityClassifier:
    name: str  # what the user wrote
    source: str  # local folder or hub id
    labels: dict[int, str]
    toxic: int  # index of the toxic label (with one output: the sigmoid of that output)


def resolve_classifier(name: str, toxic_label: str = "auto") -> ToxicityClassifier:
    """Find the classifier and its toxic label from its config alone, before any model is loaded."""
    from pathlib import Path

    from transformers import AutoConfig

    from posttrain.models.loading import check_hub_reachable, hub_errors

    source = CLASSIFIER_ALIASES.get(name, name)
    path = Path(source).expanduser()
    if path.is_dir():
        source = str(path.resolve())
    elif source.startswith((".", "/", "~")):
        raise UserError(f"--classifier {name}: no such folder. Give a classifier folder, a hub id or toxigen_roberta.")
    else:
        check_hub_reachable(source)
    with hub_errors(source):
        config = AutoConfig.from_pretrained(source)
    labels = {int(i): str(label) for i, label in (config.id2label or {}).items()}
    if not labels:
        labels = {i: f"LABEL_{i}" for i in range(config.num_labels)}
    return ToxicityClassifier(name, source, labels, toxic_index(labels, toxic_label, name))


def toxic_index(labels: dict[int, str], choice: str, classifier: str) -> int:
    """The output that means toxic: `choice` names a label or an index; "auto" takes the one label named like
    toxic/hate/offensive (not "non-toxic" or "not hate"), else LABEL_1, else index 1 of two outputs."""
    shown = ", ".join(f"{i}={label}" for i, label in sorted(labels.items()))
    if choice != "auto":
        for index, label in labels.items():
            if choice in (label, str(index)):
                return index
        raise UserError(f"--toxic-label {choice}: {classifier} has no such label (its labels: {shown}).")
    if len(labels) == 1:
        return next(iter(labels))
    named = [i for i, label in labels.items() if is_toxic_name(label)]
    if len(named) == 1:
        return named[0]
    if not named and "LABEL_1" in labels.values():
        return next(i for i, label in labels.items() if label == "LABEL_1")
    if not named and len(labels) == 2:
        return 1
    raise UserError(
        f"--classifier {classifier}: cannot tell which label means toxic (its labels: {shown}). "
        "Name it with --toxic-label LABEL or INDEX."
    )


def is_toxic_name(label: str) -> bool:
    words = label.lower().replace("-", " ").replace("_", " ").split()
    return any(w.startswith(TOXIC_WORDS) for w in words) and not {"non", "not", "no"} & set(words)


def toxicity_probabilities(classifier: ToxicityClassifier, texts: list[str], batch_size: int = 16) -> list[float]:
    """P(toxic) of each text: the softmax over the labels (a sigmoid for a one-output model), on the GPU if any."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from posttrain.models.loading import hub_errors

    with hub_errors(classifier.source):
        tokenizer = AutoTokenizer.from_pretrained(classifier.source)
        model = AutoModelForSequenceClassification.from_pretrained(classifier.source)
    if tokenizer.pad_token is None:  # e.g. a Llama-based classifier: padding only needs some token to fill with
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model.config.pad_token_id = tokenizer.pad_token_id
    model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    limit = min(tokenizer.model_max_length, getattr(model.config, "max_position_embeddings", None) or 512, 4096)
    probabilities: list[float] = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            texts[start : start + batch_size], padding=True, truncation=True, max_length=limit, return_tensors="pt"
        ).to(model.device)
        with torch.no_grad():
            logits = model(**batch).logits.float()
        if logits.shape[-1] == 1:
            chosen = torch.sigmoid(logits[:, 0])
        else:
            chosen = torch.softmax(logits, dim=-1)[:, classifier.toxic]
        probabilities += chosen.tolist()
    return probabilities
