//! Validating policy texts into a [`Policy`]: each file on its own, then the references between files
//! (classes named by rules and roles, roles named by tenant overrides), every problem reported with
//! `file:line`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::doc::{ClassDoc, ColumnDoc, FileDoc, RoleDoc, TenantDoc};
use super::lists::{Problems, functions, kinds, line_of, operators, raw_set, valid_class_name};
use super::mask::mask_fn;
use super::{ColumnRule, Policy, PolicyError, RoleRules, TenantPolicy, Unclassified};
use crate::ids::{RoleName, TenantId};
use crate::policy::catalog::resolve::DEFAULT_TRUSTED_EXTENSIONS;
use crate::policy::kinds::StatementKind;
use crate::policy::pattern::ColumnPattern;

/// A name one file uses that another may define: checked once every file is read.
enum Reference {
    /// A global `[[column]]` rule: its pattern, and the class it assigns.
    Rule {
        loc: String,
        pattern: String,
        class: String,
    },
    /// A tenant's `[[tenants.T.column]]` rule assigns this class.
    TenantRuleClass { loc: String, class: String },
    /// A role (or a tenant's override of it) sees these classes raw.
    Raw {
        loc: String,
        role: String,
        classes: Vec<String>,
    },
    /// A tenant overrides this role.
    OverriddenRole { loc: String, role: String },
}

/// The policy being assembled from its files.
struct Loader {
    p: Problems,
    policy: Policy,
    trusted_set: bool,
    unclassified_set: bool,
    /// Where each class is defined (also the classes whose masking function was invalid).
    class_at: HashMap<String, String>,
    references: Vec<Reference>,
}

/// Validates policy texts (file name, contents).
pub(super) fn from_texts(texts: &[(PathBuf, String)]) -> Result<Policy, PolicyError> {
    let mut l = Loader {
        p: Problems::default(),
        policy: Policy {
            sources: texts.iter().map(|(f, _)| f.clone()).collect(),
            classes: HashMap::new(),
            rules: Vec::new(),
            roles: HashMap::new(),
            tenants: HashMap::new(),
            unclassified: Unclassified::Allow,
            trusted_extensions: DEFAULT_TRUSTED_EXTENSIONS
                .iter()
                .map(|e| (*e).to_owned())
                .collect(),
        },
        trusted_set: false,
        unclassified_set: false,
        class_at: HashMap::new(),
        references: Vec::new(),
    };
    for (file, text) in texts {
        l.file(file, text);
    }
    l.resolve_references();
    l.check_guard_windows();
    if l.policy.roles.is_empty() && l.p.0.is_empty() {
        l.p.push("no roles are defined: every statement of every role would be refused".to_owned());
    }
    if l.p.0.is_empty() {
        Ok(l.policy)
    } else {
        Err(PolicyError { problems: l.p.0 })
    }
}

/// Where things are in one file.
struct Locator<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Locator<'_> {
    fn at<T>(&self, item: &Spanned<T>) -> String {
        format!(
            "{}:{}",
            self.file.display(),
            line_of(self.text, item.span().start)
        )
    }
}

impl Loader {
    fn file(&mut self, file: &Path, text: &str) {
        let doc: FileDoc = match toml::from_str(text) {
            Ok(d) => d,
            Err(e) => {
                let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
                self.p
                    .push(format!("{}:{line}: {}", file.display(), e.message()));
                return;
            }
        };
        let at = Locator { file, text };
        if let Some(u) = doc.unclassified {
            if self.unclassified_set {
                self.p.push(format!(
                    "{}: `unclassified` is set in more than one file",
                    file.display()
                ));
            }
            self.unclassified_set = true;
            self.policy.unclassified = u;
        }
        if let Some(t) = &doc.trusted_extensions {
            self.trusted_extensions(&at.at(t), t.get_ref());
        }
        for (name, class) in doc.classes {
            self.class(at.at(&class), name, class.get_ref());
        }
        for rule in &doc.column {
            let r = rule.get_ref();
            self.references.push(Reference::Rule {
                loc: at.at(rule),
                pattern: r.pattern.clone(),
                class: r.class.clone(),
            });
        }
        for (name, role) in doc.roles {
            self.role(at.at(&role), name, role.into_inner());
        }
        for (tenant, t) in doc.tenants {
            self.tenant(&at, at.at(&t), tenant, t.into_inner());
        }
    }

    fn trusted_extensions(&mut self, loc: &str, list: &[String]) {
        if self.trusted_set {
            self.p.push(format!(
                "{loc}: `trusted_extensions` is set in more than one file"
            ));
        }
        self.trusted_set = true;
        self.policy.trusted_extensions.clear();
        for e in list {
            if e.is_empty() || e.len() > 63 || e.contains('\0') {
                self.p.push(format!(
                    "{loc}: trusted_extensions entry {e:?} is not an extension name"
                ));
            } else {
                self.policy.trusted_extensions.insert(e.clone());
            }
        }
    }

    fn class(&mut self, loc: String, name: String, class: &ClassDoc) {
        if !valid_class_name(&name) {
            self.p.push(format!(
                "{loc}: class name {name:?} must be 1-63 chars of [a-z0-9_.-]"
            ));
        }
        if let Some(prev) = self.class_at.get(&name) {
            self.p
                .push(format!("{loc}: class {name:?} already defined at {prev}"));
            return;
        }
        match mask_fn(class) {
            Ok(f) => {
                self.policy.classes.insert(name.clone(), f);
            }
            Err(errs) => {
                for e in errs {
                    self.p.push(format!("{loc}: class {name:?}: {e}"));
                }
            }
        }
        self.class_at.insert(name, loc);
    }

    fn role(&mut self, loc: String, name: String, r: RoleDoc) {
        let rn = RoleName::new(name.clone());
        if self.policy.roles.contains_key(&rn) {
            self.p
                .push(format!("{loc}: role {name:?} is defined twice"));
            return;
        }
        let p = &mut self.p;
        let statements = match &r.statements {
            Some(s) => kinds(s, &loc, p),
            None => StatementKind::masked_default(),
        };
        if r.unrestricted
            && (!r.raw.is_empty() || r.statements.is_some() || !r.allow_functions.is_empty())
        {
            p.push(format!("{loc}: role {name:?}: `unrestricted = true` cannot be combined with raw/statements/allow_functions"));
        }
        let raw = raw_set(&r.raw);
        let allow_functions = functions(&r.allow_functions, &loc, p);
        let allow_operators = operators(&r.allow_operators, &loc, p);
        let guard = r.guard.unwrap_or_default();
        for problem in guard.problems() {
            p.push(format!("{loc}: role {name:?}: {problem}"));
        }
        self.references.push(Reference::Raw {
            loc,
            role: name,
            classes: r.raw,
        });
        self.policy.roles.insert(
            rn,
            RoleRules {
                unrestricted: r.unrestricted,
                raw,
                statements,
                allow_functions,
                allow_operators,
                unclassified: r.unclassified,
                guard,
            },
        );
    }

    fn tenant(&mut self, at: &Locator<'_>, loc: String, tenant: String, t: TenantDoc) {
        let id = TenantId::new(tenant.clone());
        if self.policy.tenants.contains_key(&id) {
            self.p
                .push(format!("{loc}: tenant {tenant:?} is defined twice"));
            return;
        }
        let mut tp = TenantPolicy {
            unclassified: t.unclassified,
            ..TenantPolicy::default()
        };
        for rule in &t.column {
            tp.rules
                .extend(self.tenant_rule(at.at(rule), rule.get_ref()));
        }
        for (role, r) in t.roles {
            let rloc = at.at(&r);
            let r = r.into_inner();
            let p = &mut self.p;
            if let Some(s) = &r.statements {
                kinds(s, &rloc, p);
            }
            if let Some(f) = &r.allow_functions {
                functions(f, &rloc, p);
            }
            if let Some(o) = &r.allow_operators {
                operators(o, &rloc, p);
            }
            // Checked alone here; the window, once merged with the role's keys (`check_guard_windows`).
            if let Some(g) = &r.guard {
                for problem in g.problems().into_iter().filter(|m| !m.contains("window")) {
                    p.push(format!("{rloc}: role {role:?}: {problem}"));
                }
            }
            if let Some(raw) = &r.raw {
                self.references.push(Reference::Raw {
                    loc: rloc.clone(),
                    role: role.clone(),
                    classes: raw.clone(),
                });
            }
            self.references.push(Reference::OverriddenRole {
                loc: rloc,
                role: role.clone(),
            });
            tp.roles.insert(RoleName::new(role), r);
        }
        self.policy.tenants.insert(id, tp);
    }

    fn tenant_rule(&mut self, loc: String, rule: &ColumnDoc) -> Option<ColumnRule> {
        let parsed = match ColumnPattern::parse(&rule.pattern) {
            Ok(pattern) => Some(ColumnRule {
                pattern,
                class: rule.class.clone(),
            }),
            Err(e) => {
                self.p.push(format!("{loc}: {e}"));
                None
            }
        };
        self.references.push(Reference::TenantRuleClass {
            loc,
            class: rule.class.clone(),
        });
        parsed
    }

    /// Cross-references, now that every file is read.
    fn resolve_references(&mut self) {
        for r in std::mem::take(&mut self.references) {
            match r {
                Reference::Rule {
                    loc,
                    pattern,
                    class,
                } => match ColumnPattern::parse(&pattern) {
                    Ok(pattern) => {
                        if !self.policy.classes.contains_key(&class)
                            && !self.class_at.contains_key(&class)
                        {
                            self.p.push(format!("{loc}: unknown class {class:?}"));
                        }
                        self.policy.rules.push(ColumnRule { pattern, class });
                    }
                    Err(e) => self.p.push(format!("{loc}: {e}")),
                },
                Reference::TenantRuleClass { loc, class } => {
                    if !self.class_at.contains_key(&class) {
                        self.p.push(format!("{loc}: unknown class {class:?}"));
                    }
                }
                Reference::Raw { loc, role, classes } => {
                    // Entries are split at commas, as they always were (a class name has none).
                    for c in classes
                        .iter()
                        .flat_map(|c| c.split(','))
                        .filter(|c| !c.is_empty() && *c != "*")
                    {
                        if !self.class_at.contains_key(c) {
                            self.p.push(format!(
                                "{loc}: role {role:?}: raw lists unknown class {c:?}"
                            ));
                        }
                    }
                }
                Reference::OverriddenRole { loc, role } => {
                    if !self.policy.roles.contains_key(&RoleName::new(role.clone())) {
                        self.p.push(format!(
                            "{loc}: tenant override for undefined role {role:?}"
                        ));
                    }
                }
            }
        }
    }

    /// A tenant's guard keys merged with its role's must still name the window their budgets need.
    fn check_guard_windows(&mut self) {
        for (tenant, t) in &self.policy.tenants {
            for (role, o) in &t.roles {
                if let (Some(g), Some(base)) = (o.guard, self.policy.roles.get(role)) {
                    for problem in base.guard.overridden(Some(g)).problems() {
                        if problem.contains("window") {
                            self.p
                                .push(format!("tenant \"{tenant}\": role \"{role}\": {problem}"));
                        }
                    }
                }
            }
        }
    }
}
