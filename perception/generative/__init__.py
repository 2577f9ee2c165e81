"""Generative augmentation: the object bank (`bank`) that GT-paste and the generators read."""

from .bank import (
    BANK_FORMAT_VERSION,
    BOX_FRAME,
    EVALUATION_SPLITS,
    BankFileError,
    BankObject,
    BankSummary,
    CameraView,
    ObjectBank,
    extract_objects,
    read_bank,
    write_bank,
)

__all__ = [
    "BANK_FORMAT_VERSION",
    "BOX_FRAME",
    "EVALUATION_SPLITS",
    "BankFileError",
    "BankObject",
    "BankSummary",
    "CameraView",
    "ObjectBank",
    "extract_objects",
    "read_bank",
    "write_bank",
]
