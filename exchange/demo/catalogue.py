"""What the demo registers: four issuing departments, their certificate types, where each
type's records live, and the service centre's grants for a birth registration (出生登记).
"""

from __future__ import annotations

from dataclasses import dataclass

REQUESTER = "SERVICE_CENTRE"
REQUESTER_NAME = "市政务服务中心 (municipal government service centre)"
PURPOSE = "birth_registration"


@dataclass(frozen=True)
class IssuingDepartment:
    code: str
    name: str
    node: str  # adapter node identity name
    backend: str  # "sql" or "files"
    data_file: str


@dataclass(frozen=True)
class CertificateTypeSpec:
    code: str
    name: str
    issuer: str
    subject_kind: str
    # field name -> (column or key in the department's data, description)
    fields: dict[str, tuple[str, str]]
    source: dict[str, str]  # table / subject column / document id / issued at / valid until


DEPARTMENTS = (
    IssuingDepartment("PSB", "市公安局 (public security bureau)", "psb-node", "sql", "psb.db"),
    IssuingDepartment(
        "HEALTH",
        "市卫生健康委员会 (health commission)",
        "health-node",
        "files",
        "birth_certificates.csv",
    ),
    IssuingDepartment("CIVIL", "市民政局 (civil affairs bureau)", "civil-node", "sql", "civil.db"),
    IssuingDepartment(
        "SAMR",
        "市市场监督管理局 (market regulation)",
        "samr-node",
        "files",
        "business_licences.json",
    ),
)

CERTIFICATE_TYPES = (
    CertificateTypeSpec(
        "resident_identity",
        "居民身份证 resident identity card",
        "PSB",
        "RESIDENT_ID",
        {
            "name": ("full_name", "姓名 name"),
            "sex": ("sex", "性别 sex"),
            "ethnicity": ("ethnicity", "民族 ethnicity"),
            "birth_date": ("birth_date", "出生日期 date of birth"),
            "address": ("address", "住址 address"),
            "issuing_authority": ("issuing_authority", "签发机关 issuing authority"),
        },
        {
            "table": "residents",
            "subject": "id_number",
            "document_id": "card_number",
            "issued_at": "issued_on",
            "valid_until": "valid_until",
        },
    ),
    CertificateTypeSpec(
        "household_registration",
        "户口登记 household registration",
        "PSB",
        "RESIDENT_ID",
        {
            "household_number": ("household_number", "户号 household number"),
            "relationship_to_head": ("relationship", "与户主关系 relationship to head"),
            "registered_address": ("registered_address", "户籍地址 registered address"),
        },
        {
            "table": "households",
            "subject": "id_number",
            "document_id": "household_number",
            "issued_at": "registered_on",
        },
    ),
    CertificateTypeSpec(
        "birth_medical_certificate",
        "出生医学证明 birth medical certificate",
        "HEALTH",
        "RESIDENT_ID",
        {
            "certificate_number": ("certificate_number", "编号 certificate number"),
            "child_name": ("child_name", "新生儿姓名 child's name"),
            "sex": ("sex", "性别 sex"),
            "birth_date": ("birth_date", "出生日期 date of birth"),
            "birth_place": ("birth_place", "出生地点 place of birth"),
            "mother_name": ("mother_name", "母亲姓名 mother's name"),
            "mother_id": ("mother_id", "母亲身份证件号 mother's ID"),
            "father_name": ("father_name", "父亲姓名 father's name"),
            "father_id": ("father_id", "父亲身份证件号 father's ID"),
        },
        {"subject": "child_id", "document_id": "certificate_number", "issued_at": "issued_on"},
    ),
    CertificateTypeSpec(
        "marriage_certificate",
        "结婚证 marriage certificate",
        "CIVIL",
        "RESIDENT_ID",
        {
            "certificate_number": ("certificate_number", "证书编号 certificate number"),
            "holder_name": ("holder_name", "持证人 holder"),
            "spouse_name": ("spouse_name", "配偶姓名 spouse's name"),
            "spouse_id": ("spouse_id", "配偶身份证件号 spouse's ID"),
            "registered_on": ("registered_on", "登记日期 date of registration"),
            "registry_office": ("registry_office", "登记机关 registry office"),
        },
        {
            "table": "marriage_certificates",
            "subject": "holder_id",
            "document_id": "certificate_number",
            "issued_at": "registered_on",
        },
    ),
    CertificateTypeSpec(
        "business_licence",
        "营业执照 business licence",
        "SAMR",
        "UNIFIED_SOCIAL_CREDIT_CODE",
        {
            "name": ("name", "名称 name"),
            "legal_representative": ("legal_representative", "法定代表人 legal representative"),
            "registered_capital": ("registered_capital", "注册资本 registered capital"),
            "established_on": ("established_on", "成立日期 date of establishment"),
            "business_scope": ("business_scope", "经营范围 business scope"),
            "address": ("address", "住所 address"),
            "entity_type": ("entity_type", "类型 type"),
        },
        {"subject": "uscc", "document_id": "licence_number", "issued_at": "issued_on"},
    ),
)

# The service centre may see what a birth registration needs, and nothing else: no
# ethnicity, no issuing authority, and no business licences at all.
GRANTS = {
    "birth_medical_certificate": (
        "certificate_number",
        "child_name",
        "sex",
        "birth_date",
        "birth_place",
        "mother_name",
        "mother_id",
        "father_name",
        "father_id",
    ),
    "resident_identity": ("name", "sex", "birth_date", "address"),
    "marriage_certificate": (
        "certificate_number",
        "holder_name",
        "spouse_name",
        "spouse_id",
        "registered_on",
    ),
    "household_registration": ("household_number", "relationship_to_head", "registered_address"),
}
