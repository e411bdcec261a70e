"""Exported artifacts, torch-free: the manifest schema, file checksums, the format registry and
the reference outputs verification compares against. Exporters write through it and the runtime
reads through it."""

from .destination import check_destination, write_directory
from .files import check_files, describe_files, sha256
from .formats import FIDELITY_OPTIONS, FORMATS, NATIVE_WEIGHTS, Format, backends_for, check_export_request, get_format
from .manifest import (
    MANIFEST,
    SCHEMA_VERSION,
    Manifest,
    is_artifact,
    looks_like_artifact,
    read_manifest,
    replace_problem,
    write_artifact,
)
from .reference import (
    REFERENCE,
    TOLERANCE,
    compare,
    compare_fingerprints,
    fingerprint,
    load_reference,
    reference_inputs,
    save_reference,
    tolerance_for,
    verification_inputs,
)

__all__ = ["FIDELITY_OPTIONS", "FORMATS", "MANIFEST", "NATIVE_WEIGHTS", "REFERENCE", "SCHEMA_VERSION", "TOLERANCE",
           "Format", "Manifest", "backends_for", "check_destination", "check_export_request", "check_files",
           "compare", "compare_fingerprints", "describe_files", "fingerprint", "get_format", "is_artifact",
           "load_reference", "looks_like_artifact", "read_manifest", "reference_inputs", "replace_problem",
           "save_reference", "sha256", "tolerance_for", "verification_inputs", "write_artifact", "write_directory"]
