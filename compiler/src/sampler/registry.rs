//! The sampler catalogue as one table: each `[sampler] method` with its family, the model
//! output its steps read, its orders for the ODE and the SDE, and the options that apply to
//! it. Registering a sampler is its variant of [`Method`] and its row of `REGISTRY`; the
//! family module it names does the rest.

use serde::{Deserialize, Serialize};

use super::family::Family;
use super::{bdia, deis, edict, multistep, plms, rex, unipc};
use crate::plan::Pred;

/// The sampler methods (`[sampler] method`), in the registry's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// DDIM (first-order DPM-Solver; with `equation = "sde"`, DDPM's ancestral step).
    Ddim,
    /// DPM-Solver in the noise form: singlestep by default (DPM-Solver-2 and -3).
    DpmSolver,
    /// DPM-Solver++ in the data form: multistep by default (2M, 3M).
    DpmSolverPp,
    /// DEIS tAB: Lagrange extrapolation of eps in t (or log rho), integrated exactly.
    Deis,
    /// UniPC: the unified predictor and corrector.
    Unipc,
    /// SDE-DPM-Solver-1 (noise form; always the SDE).
    SdeDpmSolver,
    /// SDE-DPM-Solver++ 1 and 2M (data form; always the SDE).
    SdeDpmSolverPp,
    /// Rex: a Runge-Kutta tableau in Lawson's variables with the reversible coupling (exact
    /// algebraic inverse; the `reversible` gradient).
    Rex,
    /// BDIA: DDIM with the bi-directional correction, reversible given the last two states.
    Bdia,
    /// EDICT: two coupled DDIM sequences mixed with weight p, reversible given the pair.
    Edict,
    /// PLMS: Adams-Bashforth on the noise predictions (equal-step coefficients) with DDIM's
    /// transfer; the heavy ball or the generalised heavy ball on it.
    Plms,
}

/// One row of the catalogue.
pub(crate) struct Entry {
    pub method: Method,
    /// The spec's spelling (also serde's, by `rename_all`).
    pub name: &'static str,
    /// The module that validates, describes and emits this method's steps.
    pub family: &'static dyn Family,
    /// What its steps read: eps or the data prediction.
    pub form: Pred,
    /// Its orders for the probability-flow ODE.
    pub orders: &'static [usize],
    /// Its orders for the reverse SDE (empty: no SDE form).
    pub sde_orders: &'static [usize],
    /// It always solves the SDE (`equation` absent means "sde", and "ode" is refused).
    pub sde_only: bool,
    /// Multistep unless `multistep = false` says otherwise (DPM-Solver's noise form is
    /// singlestep by default, as in the DPM-Solver paper).
    pub multistep_by_default: bool,
    /// The options of [`OWNED_OPTIONS`] that apply to it.
    pub options: &'static [&'static str],
}

/// The DPM-Solver options of the second- and third-order updates.
const DPM_UPDATES: &[&str] = &["solver_type", "third_order"];
/// ... and the choice between the multistep and the singlestep forms, and momentum on the
/// multistep form.
const DPM_FORMS: &[&str] = &[
    "solver_type",
    "third_order",
    "multistep",
    "stages",
    "momentum",
    "momentum_beta",
];
/// Momentum on a multistep combination of model outputs.
const MOMENTUM: &[&str] = &["momentum", "momentum_beta"];

/// The catalogue, one row a method.
pub(crate) const REGISTRY: [Entry; 11] = [
    Entry {
        method: Method::Ddim,
        name: "ddim",
        family: &multistep::Multistep,
        form: Pred::Eps,
        orders: &[1],
        sde_orders: &[1],
        sde_only: false,
        multistep_by_default: true,
        options: MOMENTUM,
    },
    Entry {
        method: Method::DpmSolver,
        name: "dpm_solver",
        family: &multistep::Multistep,
        form: Pred::Eps,
        orders: &[1, 2, 3],
        sde_orders: &[1],
        sde_only: false,
        multistep_by_default: false,
        options: DPM_FORMS,
    },
    Entry {
        method: Method::DpmSolverPp,
        name: "dpm_solver_pp",
        family: &multistep::Multistep,
        form: Pred::Data,
        orders: &[1, 2, 3],
        sde_orders: &[1, 2],
        sde_only: false,
        multistep_by_default: true,
        options: DPM_FORMS,
    },
    Entry {
        method: Method::Deis,
        name: "deis",
        family: &deis::Deis,
        form: Pred::Eps,
        orders: &[1, 2, 3],
        sde_orders: &[],
        sde_only: false,
        multistep_by_default: true,
        options: &["deis_basis"],
    },
    Entry {
        method: Method::Unipc,
        name: "unipc",
        family: &unipc::Unipc,
        form: Pred::Data,
        orders: &[1, 2, 3],
        sde_orders: &[],
        sde_only: false,
        multistep_by_default: true,
        options: &["variant", "corrector", "disable_corrector"],
    },
    Entry {
        method: Method::SdeDpmSolver,
        name: "sde_dpm_solver",
        family: &multistep::Multistep,
        form: Pred::Eps,
        orders: &[1],
        sde_orders: &[1],
        sde_only: true,
        multistep_by_default: true,
        options: DPM_UPDATES,
    },
    Entry {
        method: Method::SdeDpmSolverPp,
        name: "sde_dpm_solver_pp",
        family: &multistep::Multistep,
        form: Pred::Data,
        orders: &[1, 2],
        sde_orders: &[1, 2],
        sde_only: true,
        multistep_by_default: true,
        options: &["solver_type", "third_order", "stages"],
    },
    Entry {
        method: Method::Rex,
        name: "rex",
        family: &rex::Rex,
        form: Pred::Data,
        orders: &[1, 2, 3, 4],
        sde_orders: &[1, 2],
        sde_only: false,
        multistep_by_default: false,
        options: &["tableau", "coupling", "form"],
    },
    Entry {
        method: Method::Bdia,
        name: "bdia",
        family: &bdia::Bdia,
        form: Pred::Eps,
        orders: &[1],
        sde_orders: &[],
        sde_only: false,
        multistep_by_default: true,
        options: &["gamma"],
    },
    Entry {
        method: Method::Edict,
        name: "edict",
        family: &edict::Edict,
        form: Pred::Eps,
        orders: &[1],
        sde_orders: &[],
        sde_only: false,
        multistep_by_default: false,
        options: &["mixing"],
    },
    Entry {
        method: Method::Plms,
        name: "plms",
        family: &plms::Plms,
        form: Pred::Eps,
        orders: &[1, 2, 3, 4],
        sde_orders: &[],
        sde_only: false,
        multistep_by_default: true,
        options: &["momentum", "momentum_beta"],
    },
];

/// The options that belong to some methods only (a row's `options` names them), and what a
/// spec that gives one to a method without it is told (`{m}`: the method; `{with}`: the
/// methods that have it).
pub(crate) const OWNED_OPTIONS: [(&str, &str); 15] = [
    ("variant", "`variant` is UniPC's; method `{m}` has none"),
    ("corrector", "`corrector` is UniPC's; method `{m}` has none"),
    (
        "disable_corrector",
        "skips UniPC's corrector after the steps listed; it needs method = \"unipc\" with its corrector on",
    ),
    (
        "deis_basis",
        "chooses DEIS's interpolation variable; method `{m}` is not deis",
    ),
    (
        "solver_type",
        "`solver_type` (midpoint | heun) is the second-order DPM-Solver update's; method `{m}` has none",
    ),
    (
        "third_order",
        "`third_order` chooses the third-order multistep DPM-Solver coefficients; it needs a dpm_solver method, order = 3, multistep",
    ),
    (
        "multistep",
        "`multistep` chooses between DPM-Solver's multistep and singlestep forms; method `{m}` has one form",
    ),
    (
        "stages",
        "\"grid\" is singlestep DPM-Solver's ({with}); method `{m}` has no stages",
    ),
    (
        "tableau",
        "`tableau` is the Runge-Kutta tableau of {with}; method `{m}` has its own steps",
    ),
    (
        "coupling",
        "`coupling` is the reversible coupling of {with}; method `{m}` is not reversible",
    ),
    (
        "form",
        "`form` (data | eps) chooses the Lawson variables of {with}; method `{m}` has its form fixed",
    ),
    (
        "momentum",
        "`momentum` acts on the multistep samplers' model outputs ({with}); method `{m}` has none",
    ),
    (
        "momentum_beta",
        "`momentum_beta` goes with `momentum` ({with}); method `{m}` has none",
    ),
    (
        "gamma",
        "`gamma` weighs BDIA's backward correction ({with}); method `{m}` has none",
    ),
    (
        "mixing",
        "`mixing` is EDICT's weight p between its two sequences ({with}); method `{m}` has none",
    ),
];

impl Method {
    /// Every method, in the registry's order.
    pub const ALL: [Method; REGISTRY.len()] = {
        let mut all = [Method::Ddim; REGISTRY.len()];
        let mut i = 0;
        while i < all.len() {
            all[i] = REGISTRY[i].method;
            i += 1;
        }
        all
    };

    /// The method's row of the catalogue.
    pub(crate) fn entry(self) -> &'static Entry {
        const { &REGISTRY }
            .iter()
            .find(|e| e.method == self)
            .expect("every method has its row in REGISTRY")
    }

    /// The spec's name of the method.
    pub fn name(self) -> &'static str {
        self.entry().name
    }

    /// The orders this method has (for the ODE; see [`Method::sde_orders`]).
    pub fn orders(self) -> &'static [usize] {
        self.entry().orders
    }

    /// The orders of this method's SDE form (empty: it has none).
    pub fn sde_orders(self) -> &'static [usize] {
        self.entry().sde_orders
    }

    /// What its steps read from the model: eps or the data prediction.
    pub fn form(self) -> Pred {
        self.entry().form
    }

    /// Whether `option` (a key of `OWNED_OPTIONS`) applies to this method; options owned
    /// by no method's family apply to all.
    pub fn has_option(self, option: &str) -> bool {
        self.entry().options.contains(&option) || !OWNED_OPTIONS.iter().any(|o| o.0 == option)
    }

    /// The family that owns this method.
    pub(crate) fn family(self) -> &'static dyn Family {
        self.entry().family
    }

    /// Why `option` does not apply to this method (None: it does).
    pub(crate) fn refuses(self, option: &str) -> Option<String> {
        if self.has_option(option) {
            return None;
        }
        self.why_not(option)
    }

    /// What a spec that gives `option` where it does nothing is told (None: `option` is not
    /// one of [`OWNED_OPTIONS`]).
    pub(crate) fn why_not(self, option: &str) -> Option<String> {
        let (_, why) = OWNED_OPTIONS.iter().find(|o| o.0 == option)?;
        let with: Vec<&str> = REGISTRY
            .iter()
            .filter(|e| e.options.contains(&option))
            .map(|e| e.name)
            .collect();
        Some(
            why.replace("{m}", self.name())
                .replace("{with}", &with.join(", ")),
        )
    }
}

/// The reversible methods' names, "rex or bdia" (for the errors that send a user to them).
pub fn reversible_methods() -> String {
    let names: Vec<&str> = REGISTRY
        .iter()
        .filter(|e| e.family.reversible())
        .map(|e| e.name)
        .collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => {
            let quoted: Vec<String> = rest.iter().map(|n| format!("\"{n}\"")).collect();
            format!("{} or \"{last}\"", quoted.join(", "))
        }
        _ => names.iter().map(|n| format!("\"{n}\"")).collect(),
    }
}

/// The methods with an SDE form and their orders, for the error that names them: methods with
/// the same orders one after another share them ("ddim and dpm_solver (order 1)"); the
/// `sde_*` methods, SDE-only, stand by name.
pub(crate) fn sde_forms() -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut group: Vec<&str> = Vec::new();
    let rows: Vec<&Entry> = REGISTRY
        .iter()
        .filter(|e| !e.sde_orders.is_empty())
        .collect();
    for (k, e) in rows.iter().enumerate() {
        if e.sde_only {
            parts.push(e.name.to_string());
            continue;
        }
        group.push(e.name);
        let next_same = rows
            .get(k + 1)
            .is_some_and(|n| !n.sde_only && n.sde_orders == e.sde_orders);
        if !next_same {
            let orders: Vec<String> = e.sde_orders.iter().map(usize::to_string).collect();
            let word = if orders.len() == 1 { "order" } else { "orders" };
            parts.push(format!(
                "{} ({word} {})",
                group.join(" and "),
                orders.join(", ")
            ));
            group.clear();
        }
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_has_one_row() {
        for m in Method::ALL {
            assert_eq!(REGISTRY.iter().filter(|e| e.method == m).count(), 1);
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(
                json,
                format!("\"{}\"", m.name()),
                "serde's name is the row's"
            );
        }
    }

    #[test]
    fn the_sde_forms_are_named_from_the_table() {
        assert_eq!(
            sde_forms(),
            "ddim and dpm_solver (order 1), dpm_solver_pp (orders 1, 2), sde_dpm_solver, sde_dpm_solver_pp, rex (orders 1, 2)"
        );
    }

    #[test]
    fn the_reversible_methods_are_named_from_the_table() {
        assert_eq!(reversible_methods(), "\"rex\", \"bdia\" or \"edict\"");
    }

    #[test]
    fn an_owned_option_is_refused_by_name() {
        assert_eq!(Method::Unipc.refuses("corrector"), None);
        assert_eq!(
            Method::Ddim.refuses("corrector").unwrap(),
            "`corrector` is UniPC's; method `ddim` has none"
        );
        assert!(Method::Deis
            .refuses("stages")
            .unwrap()
            .contains("(dpm_solver, dpm_solver_pp, sde_dpm_solver_pp)"));
        assert_eq!(Method::Ddim.refuses("grid"), None);
    }
}
