//! Columns that look like personal data by name and type but that no policy rule classifies. "Classified"
//! means exactly what masking does: the catalog snapshot's [`Catalog::classes`] with the tenant's rules, so
//! a partition, inheritance child, generated or view column that inherits a class is classified. No row is
//! read: the heuristics look at names and types only, so they can miss columns and flag harmless ones.

use crate::ids::{RoleName, TenantId};
use crate::policy::catalog::{Catalog, Column};
use crate::policy::file::{Effective, Policy, Unclassified};
use crate::policy::functions::TypeFamily;

use super::{Finding, Severity};

/// A kind of personal data the heuristics recognise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// E-mail address.
    Email,
    /// IP address.
    Ip,
    /// Card number (PAN).
    Pan,
    /// Bank account (IBAN).
    Iban,
    /// National identifier (SSN and the like).
    NationalId,
    /// Date of birth.
    Birth,
    /// Phone number.
    Phone,
    /// Postal address.
    Address,
    /// Person's name.
    Name,
}

impl Kind {
    /// What it is, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Email => "an e-mail address",
            Kind::Ip => "an IP address",
            Kind::Pan => "a card number (PAN)",
            Kind::Iban => "a bank account number (IBAN)",
            Kind::NationalId => "a national identifier (SSN)",
            Kind::Birth => "a date of birth",
            Kind::Phone => "a phone number",
            Kind::Address => "a postal address",
            Kind::Name => "a person's name",
        }
    }

    fn types(self) -> &'static [TypeFamily] {
        use TypeFamily::*;
        match self {
            Kind::Email | Kind::Address | Kind::Name | Kind::Iban => &[Text],
            Kind::Ip => &[Inet, Text],
            Kind::Pan | Kind::NationalId | Kind::Phone => &[Text, Number],
            Kind::Birth => &[Date, Timestamp, Text],
        }
    }
}

/// Words of a column name: split at non-alphanumerics, lower/upper-case and letter/digit changes, lowercased.
fn words(name: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut prev: Option<char> = None;
    for c in name.chars() {
        let boundary = match prev {
            _ if !c.is_alphanumeric() => true,
            Some(p) => {
                (p.is_lowercase() && c.is_uppercase()) || (p.is_alphabetic() != c.is_alphabetic())
            }
            None => false,
        };
        if boundary && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        if c.is_alphanumeric() {
            cur.extend(c.to_lowercase());
        }
        prev = Some(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Words that make a following `name` a person's name.
const PERSON: &[&str] = &[
    "first",
    "last",
    "full",
    "given",
    "family",
    "middle",
    "maiden",
    "holder",
    "cardholder",
    "customer",
    "payer",
    "person",
    "contact",
    "legal",
    "billing",
    "shipping",
];

/// What kind of personal data a column name suggests, ignoring its type (first match wins: `ip_address`
/// is an IP address, not a postal one).
pub fn kind_of_name(name: &str) -> Option<Kind> {
    let w = words(name);
    let has = |s: &str| w.iter().any(|x| x == s);
    let compact: String = w.concat();
    let contains = |subs: &[&str]| subs.iter().any(|s| compact.contains(s));
    if has("mail") || contains(&["email"]) {
        Some(Kind::Email)
    } else if ["ip", "ipv4", "ipv6", "ipaddr", "ipaddress"]
        .iter()
        .any(|s| has(s))
        || contains(&["ipaddress", "remoteaddr", "clientaddr"])
    {
        Some(Kind::Ip)
    } else if has("pan")
        || contains(&[
            "cardnumber",
            "cardnum",
            "ccnumber",
            "ccnum",
            "creditcard",
            "primaryaccountnumber",
        ])
        || ((has("card") || has("cc")) && (has("number") || has("no") || has("num")))
    {
        Some(Kind::Pan)
    } else if contains(&["iban", "accountnumber", "bankaccount"]) {
        Some(Kind::Iban)
    } else if ["ssn", "nino", "passport"].iter().any(|s| has(s))
        || contains(&["socialsecurity", "nationalid", "taxid", "passportnumber"])
    {
        Some(Kind::NationalId)
    } else if has("dob") || contains(&["birth"]) {
        Some(Kind::Birth)
    } else if ["mobile", "msisdn", "tel", "fax"].iter().any(|s| has(s)) || contains(&["phone"]) {
        Some(Kind::Phone)
    } else if [
        "addr",
        "street",
        "zip",
        "zipcode",
        "postcode",
        "postal",
        "postalcode",
    ]
    .iter()
    .any(|s| has(s))
        || contains(&["address", "street"])
    {
        Some(Kind::Address)
    } else if [
        "surname",
        "forename",
        "firstname",
        "lastname",
        "fullname",
        "givenname",
        "familyname",
    ]
    .iter()
    .any(|s| has(s))
        || w.windows(2)
            .any(|p| p[1] == "name" && PERSON.contains(&p[0].as_str()))
    {
        Some(Kind::Name)
    } else {
        None
    }
}

/// What kind of personal data a column looks like by name and type.
pub fn looks_like(column: &Column) -> Option<Kind> {
    kind_of_name(&column.name).filter(|k| k.types().contains(&column.family))
}

/// Lists the PII-looking columns no rule classifies. Severity: high when a role with masked columns would
/// read one raw (`unclassified = "allow"`), low when such roles get it redacted or refused, info when no
/// role is masked, medium without a `[policy]` (masking is off; reported once more as `no-policy`).
pub fn check(tenant: &TenantId, cat: &Catalog, policy: Option<&Policy>) -> Vec<Finding> {
    // Rules do not depend on the role, so any role's effective policy classifies like masking does.
    let roles: Vec<_> = policy
        .map(|p| {
            let mut r: Vec<_> = p.roles().cloned().collect();
            r.sort();
            r
        })
        .unwrap_or_default();
    let effective: Vec<_> = policy
        .map(|p| {
            roles
                .iter()
                .filter_map(|r| p.effective(tenant, r).map(|e| (r, e)))
                .collect()
        })
        .unwrap_or_default();
    let (severity, effect) = unclassified_effect(policy, &effective);
    let direct =
        |s: &str, t: &str, c: &str| effective.first().and_then(|(_, e)| e.classify(s, t, c));
    let mut rels: Vec<_> = cat.relations.values().filter(|r| r.kind != 'S').collect();
    rels.sort_by(|a, b| (&a.schema, &a.name).cmp(&(&b.schema, &b.name)));
    let mut out = Vec::new();
    for rel in rels {
        for col in &rel.columns {
            let Some(kind) = looks_like(col) else {
                continue;
            };
            if !cat.classes(rel, &col.name, &direct).is_empty() {
                continue;
            }
            out.push(Finding::new(
                severity,
                "unclassified-pii",
                Some(tenant),
                format!("column {}.{}.{}", rel.schema, rel.name, col.name),
                format!(
                    "looks like {} by name and type ({}) but no policy rule classifies it: {effect}",
                    kind.describe(),
                    col.sql_type
                ),
                format!(
                    "classify it: [[column]] match = \"{}.{}.{}\", class = \"<a pii.* class>\"; if it holds no \
                     personal data, classify it with a class every role sees raw",
                    rel.schema, rel.name, col.name
                ),
            ));
        }
    }
    out
}

/// What masked roles get for a column no rule classifies, and how bad that is.
fn unclassified_effect(
    policy: Option<&Policy>,
    effective: &[(&RoleName, Effective<'_>)],
) -> (Severity, String) {
    // Masked roles (not seeing everything) and what they get for unclassified columns.
    let masked: Vec<_> = effective
        .iter()
        .filter(|(_, e)| !e.role.sees_everything())
        .collect();
    let raw_for: Vec<&str> = masked
        .iter()
        .filter(|(_, e)| e.role.unclassified == Unclassified::Allow)
        .map(|(r, _)| r.as_str())
        .collect();
    match (policy, masked.is_empty(), raw_for.is_empty()) {
        (None, _, _) => (
            Severity::Medium,
            "no [policy]: every role reads it raw".to_owned(),
        ),
        (Some(_), true, _) => (
            Severity::Info,
            "no role of the policy has masked columns".to_owned(),
        ),
        (Some(_), false, false) => (
            Severity::High,
            format!(
                "role(s) {} read it raw (unclassified = \"allow\")",
                raw_for.join(", ")
            ),
        ),
        (Some(_), false, true) => (
            Severity::Low,
            "masked roles get it redacted or refused (unclassified = \"mask\"/\"deny\"), not masked by a \
             function of its own"
                .to_owned(),
        ),
    }
}
