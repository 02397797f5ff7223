"""Privacy at the source: data contracts, the device pipeline, consent, receipts and sharing.

The device builds a :class:`PrivacyPipeline` from its model's
:class:`DataContract`, the owner's :class:`ConsentState`, a pseudonym
keyring and a privacy-loss ledger, and runs every sensor reading through it
before sealing; the hub checks each reading with :func:`check_reading`,
verifies receipts with :func:`verify_receipt`, and shares data only as
k-anonymous extracts (:func:`mondrian`).
"""

from iotguard.privacy.consent import (
    CONSENT_MESSAGE_VERSION,
    ConsentAck,
    ConsentConfig,
    ConsentDecision,
    ConsentState,
)
from iotguard.privacy.contract import (
    DataContract,
    FieldSpec,
    FieldType,
    LegalBasis,
    PurposeSpec,
    TransformSpec,
    check_reading,
    parse_contract,
    parse_duration,
)
from iotguard.privacy.generalise import (
    bin_value,
    bucket_time,
    geohash,
    parse_location,
    round_location,
    round_value,
    top_bottom_code,
)
from iotguard.privacy.ldp import (
    BoundedNumeric,
    DuchiMechanism,
    GeneralizedRandomizedResponse,
    HybridMechanism,
    OpenDPLaplace,
    OpenDPRandomizedResponse,
    OptimizedUnaryEncoding,
    PiecewiseMechanism,
    choose_categorical,
    choose_numeric,
)
from iotguard.privacy.ledger import (
    InMemoryLedgerStore,
    KeyStoreLedgerStore,
    LedgerStore,
    PrivacyLossLedger,
    Spend,
)
from iotguard.privacy.notice import render_notice
from iotguard.privacy.pipeline import PipelineOutput, PrivacyPipeline, ProcessedReading
from iotguard.privacy.pseudonym import PseudonymKeyring, keyring_from_keystore, period_number
from iotguard.privacy.receipt import (
    PrivacyReceipt,
    ReceiptBuilder,
    ReceiptEntry,
    decode_receipt,
    reading_digest,
    verify_receipt,
    verify_receipt_covers,
)
from iotguard.privacy.registry import (
    CONTRACT_NAME_RE,
    ContractRegistry,
    available_models,
    load_contract,
    validate_contract_name,
)
from iotguard.privacy.sharing import (
    DIRECT_IDENTIFIERS,
    AnonymisedTable,
    EquivalenceClass,
    LinkageResult,
    RiskReport,
    check_l_diversity,
    l_diversity,
    linkage_attack,
    mondrian,
    risk_report,
)

__all__ = [
    "CONSENT_MESSAGE_VERSION",
    "CONTRACT_NAME_RE",
    "DIRECT_IDENTIFIERS",
    "AnonymisedTable",
    "BoundedNumeric",
    "ConsentAck",
    "ConsentConfig",
    "ConsentDecision",
    "ConsentState",
    "ContractRegistry",
    "DataContract",
    "DuchiMechanism",
    "EquivalenceClass",
    "FieldSpec",
    "FieldType",
    "GeneralizedRandomizedResponse",
    "HybridMechanism",
    "InMemoryLedgerStore",
    "KeyStoreLedgerStore",
    "LedgerStore",
    "LegalBasis",
    "LinkageResult",
    "OpenDPLaplace",
    "OpenDPRandomizedResponse",
    "OptimizedUnaryEncoding",
    "PiecewiseMechanism",
    "PipelineOutput",
    "PrivacyLossLedger",
    "PrivacyPipeline",
    "PrivacyReceipt",
    "ProcessedReading",
    "PseudonymKeyring",
    "PurposeSpec",
    "ReceiptBuilder",
    "ReceiptEntry",
    "RiskReport",
    "Spend",
    "TransformSpec",
    "available_models",
    "bin_value",
    "bucket_time",
    "check_l_diversity",
    "check_reading",
    "choose_categorical",
    "choose_numeric",
    "decode_receipt",
    "geohash",
    "keyring_from_keystore",
    "l_diversity",
    "linkage_attack",
    "load_contract",
    "mondrian",
    "parse_contract",
    "parse_duration",
    "parse_location",
    "period_number",
    "reading_digest",
    "render_notice",
    "risk_report",
    "round_location",
    "round_value",
    "top_bottom_code",
    "validate_contract_name",
    "verify_receipt",
    "verify_receipt_covers",
]
