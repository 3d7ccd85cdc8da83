"""Onboarding by a low-rank item-response (factor) model of the router's training table.

``add_model(..., method="factor")`` (docs/onboarding-notes.md, "The factor method"). Once per router,
on its training table (the known models' grades, `fit_factor_model`):

    grade(model j, prompt x) = b_j + a_j . f(x) + noise_j,      f(x) = u(x) + g(x)

- g(x) = phi(x) W, the prompt's factors predicted from phi(x), its embedding (standardised):
  a reduced-rank ridge regression (ridge of every known model's grades on phi, penalty by
  generalised cross-validation, then the top r right singular vectors of the fitted values:
  the loadings A = (a_j), W = B A). The router's own estimates are not inputs: on its training
  prompts they are in-sample, much sharper than at routing time (routerbench_subset: their
  mean's correlation with the mean grade 0.61 on training prompts, 0.40 on test prompts), so a
  map fitted on them does not transfer (the factors' correlation fell from 0.8 to 0.0);
- u(x) ~ N(0, Su): the prompt's own deviation from g(x), which the known models' grades on that
  prompt reveal (Su and the per-model noise from the training table's residuals);
- r by simulated onboarding of the *known* models from their own training rows (each in turn
  left out, the factor model refitted on the others, 100-prompt profiles): an internal
  criterion, available when the router is fitted.

A new model is then only its vector theta = (a, b), r + 1 numbers (`fit_factor_profile`):
the prompts' factors on the profile are their posterior means given g(x) and the known
models' grades there (when the profile or a reference table holds them: that removes the
prompt's shared luck, as the "paired" method does), and theta's prior is the known models'
vectors (their mean and covariance, an empirical-Bayes prior), so the posterior is in closed
form. Its column at a prompt (`FactorFit.column`) is, by default (anchor), on the router's
own scale: the known models' average estimate there plus the new model's difference from the
average known vector along [g(x), 1] (its own prediction [g(x), 1] theta is steeper than the
known models' shrunk estimates and wins regions wrongly: routerdc_7model seed 0, 5 hurts at
every k), plus the shared residual-kernel stage of `llmroute.estimators.profiled` (fitted on
the profile's residuals from that column, the shared luck out), minus z posterior sds along
[g(x), 1] (the uncertainty of the new model along the prompt's factors).

What the saved router keeps: the factor model (phi's standardisation, W (d, r), A, b, Su
and the noise: a few KB) once, and (theta, its covariance, z, the residual kernel's rows) per
added model; the training table is needed only for the first add.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["FactorFit", "FactorModel", "factor_inputs", "fit_factor_model", "fit_factor_profile"]

#: ridge penalties tried (times the number of rows) for the prompt-factor map
_LAMBDAS = (1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0)
#: what the prompt factors are predicted from: "emb" (a ridge map of the embedding) or
#: "estimates" (the router's estimates of the known models, projected on the loadings)
INPUTS = ("emb", "estimates")
DEFAULT_INPUTS = "emb"
#: a new model's column on the router's scale (`fit_factor_profile`'s anchor)
DEFAULT_ANCHOR = True
#: profile size and draws of the simulated onboarding that picks the rank
_SIM_K, _SIM_DRAWS = 100, 3


def factor_inputs(base_q: np.ndarray, emb: np.ndarray) -> np.ndarray:
    """phi(x), (n, d) float64: the prompt's embedding (the estimates base_q are not used; see the
    module docstring)."""
    return np.asarray(emb, dtype=np.float64)


@dataclass
class FactorModel:
    """The known models' low-rank model (see the module docstring).

    mu, sd: (d,) standardisation of phi; W: (d, r) prompt-factor map; A: (m, r) the known
    models' loadings; b: (m,) their levels; s2: (m,) their noise variances; Su: (r, r) the
    covariance of a prompt's own deviation from g(x); rank_errors: the simulated onboarding's
    mean squared error per rank tried (reported only).
    """

    mu: np.ndarray
    sd: np.ndarray
    W: np.ndarray
    A: np.ndarray
    b: np.ndarray
    s2: np.ndarray
    Su: np.ndarray
    rank_errors: dict[int, float] = field(default_factory=dict)
    inputs: str = "emb"

    @property
    def rank(self) -> int:
        return int(self.W.shape[1])

    def factors(self, base_q: np.ndarray, emb: np.ndarray) -> np.ndarray:
        """(n, r) g(x): the prompts' factors predicted from their embeddings (or, with inputs
        "estimates", the known models' estimates projected on their loadings)."""
        if self.inputs == "estimates":
            return (np.asarray(base_q, dtype=np.float64) - self.b) @ self.A
        return ((factor_inputs(base_q, emb) - self.mu) / self.sd) @ self.W

    def posterior_factors(self, g: np.ndarray, known: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(n, r) posterior means and (n, r, r) covariances of the prompts' factors given g (n, r)
        and the known models' grades on them (n, m; NaN = not graded; None = none)."""
        n, r = g.shape
        F = g.copy()
        C = np.broadcast_to(self.Su, (n, r, r)).copy()
        if known is None:
            return F, C
        R = np.asarray(known, dtype=np.float64) - self.b
        masks = np.isfinite(R)
        # one gain per pattern of graded known models (usually a single pattern: all of them)
        patterns, which = np.unique(masks, axis=0, return_inverse=True)
        for t, o in enumerate(patterns):
            if not o.any():
                continue
            rows = np.flatnonzero(which.ravel() == t)
            Ao = self.A[o]
            M = Ao @ self.Su @ Ao.T + np.diag(self.s2[o])
            K = np.linalg.solve(M, Ao @ self.Su).T  # Su Ao' M^-1
            F[rows] = g[rows] + (R[np.ix_(rows, np.flatnonzero(o))] - g[rows] @ Ao.T) @ K.T
            C[rows] = self.Su - K @ Ao @ self.Su
        return F, C

    def state(self, prefix: str) -> tuple[dict[str, np.ndarray], dict]:
        """(arrays, JSON-able params) for a router file, arrays named under `prefix`."""
        names = ("mu", "sd", "W", "A", "b", "s2", "Su")
        arrays = {f"{prefix}{k}": np.asarray(getattr(self, k), dtype=np.float64) for k in names}
        return arrays, {
            "rank_errors": {str(k): v for k, v in self.rank_errors.items()},
            "inputs": self.inputs,
        }

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], prefix: str, params: dict) -> FactorModel:
        """Rebuild from `state` output."""
        get = {
            k: np.asarray(arrays[f"{prefix}{k}"], dtype=np.float64)
            for k in ("mu", "sd", "W", "A", "b", "s2", "Su")
        }
        errs = {int(k): float(v) for k, v in (params.get("rank_errors") or {}).items()}
        return cls(**get, rank_errors=errs, inputs=str(params.get("inputs", "emb")))


@dataclass
class FactorFit:
    """One model added by the factor method: theta = (a, b) ~ N(theta, cov); its column is
    [g(x), 1] theta - z sqrt([g(x), 1] cov [g(x), 1]'). Same interface as `ProfileFit` for
    `ProfiledEstimator` (predict, margin, n_rows, loo_rmse, closest, beta)."""

    model: FactorModel
    theta: np.ndarray
    cov: np.ndarray
    z: float
    n_rows: int
    loo_rmse: float
    closest: int
    noise: float = 0.0
    emb: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    resid: np.ndarray = field(default_factory=lambda: np.zeros(0))
    beta: float = 0.0
    kappa: float = 0.0
    anchor: bool = False
    combine: bool = False
    kind: str = "factor"

    @property
    def margin(self) -> float:
        """How far below its fitted quality the column is at a prompt with g(x) = 0."""
        return float(self.z * np.sqrt(self.cov[-1, -1]))

    def predict(self, base_q: np.ndarray, emb: np.ndarray) -> np.ndarray:
        """(n,) estimates from (n, m_base) clipped base estimates and (n, d) embeddings."""
        g = self.model.factors(base_q, emb)
        offset, Z = self.design(g, base_q)
        q = offset + Z @ self.theta
        if len(self.resid):
            from llmroute.estimators.profiled import _kernel_residual

            q = q + _kernel_residual(emb, self.emb, self.resid, self.beta, self.kappa)
        if self.z > 0:
            q = q - self.z * np.sqrt(np.einsum("ij,jk,ik->i", Z, self.cov, Z))
        return q

    def design(self, g: np.ndarray, base_q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(offset (n,), Z (n, r + 1)): the column of a vector theta at prompts with factors g
        (n, r) and base estimates base_q (n, m) is offset + Z theta (before the residual and the
        lower bound; its sd is that of Z theta). Own scale: Z = [g, 1]. Anchored: the known
        models' average estimate plus theta's difference from the average known vector along
        [g, 1]. Combined: the known models' estimates weighted by w(theta) = 1/m + M (theta -
        mean), the smallest change from equal weights whose weighted known vectors equal theta
        (M = Tc (Tc' Tc)^-1, Tc the known vectors centred): the new model through the router's
        own estimates."""
        fm = self.model
        Z = np.hstack([g, np.ones((len(g), 1))])
        if not self.anchor and not self.combine:
            return np.zeros(len(g)), Z
        P = np.asarray(base_q, dtype=np.float64)
        T = np.hstack([fm.A, fm.b[:, None]])
        tbar = T.mean(axis=0)
        if self.combine:
            Tc = T - tbar
            Z = P @ (Tc @ np.linalg.pinv(Tc.T @ Tc))
        return P.mean(axis=1) - Z @ tbar, Z

    def column(self, theta: np.ndarray, g: np.ndarray, base_q: np.ndarray) -> np.ndarray:
        """(n,) the column of vector theta (`design`), before the residual and the lower bound."""
        offset, Z = self.design(g, base_q)
        return offset + Z @ theta

    def state(self, prefix: str) -> tuple[dict[str, np.ndarray], dict]:
        """(arrays, params) of the new model's own state (the factor model is saved once)."""
        arrays = {
            f"{prefix}theta": self.theta,
            f"{prefix}cov": self.cov,
            f"{prefix}emb": np.asarray(self.emb, dtype=np.float32),
            f"{prefix}resid": self.resid,
        }
        params = {
            "kind": "factor",
            "z": self.z,
            "n_rows": self.n_rows,
            "loo_rmse": None if not np.isfinite(self.loo_rmse) else self.loo_rmse,
            "closest": self.closest,
            "noise": self.noise,
            "beta": self.beta,
            "kappa": self.kappa,
            "anchor": self.anchor,
            "combine": self.combine,
        }
        return arrays, params

    @classmethod
    def from_state(
        cls, model: FactorModel, arrays: dict[str, np.ndarray], prefix: str, params: dict
    ) -> FactorFit:
        """Rebuild from `state` output and the router's factor model."""
        return cls(
            model=model,
            theta=np.asarray(arrays[f"{prefix}theta"], dtype=np.float64),
            cov=np.asarray(arrays[f"{prefix}cov"], dtype=np.float64),
            z=float(params["z"]),
            n_rows=int(params["n_rows"]),
            loo_rmse=float("nan") if params.get("loo_rmse") is None else float(params["loo_rmse"]),
            closest=int(params["closest"]),
            noise=float(params.get("noise", 0.0)),
            emb=np.asarray(arrays[f"{prefix}emb"], dtype=np.float32),
            resid=np.asarray(arrays[f"{prefix}resid"], dtype=np.float64),
            beta=float(params.get("beta", 0.0)),
            kappa=float(params.get("kappa", 0.0)),
            anchor=bool(params.get("anchor", False)),
            combine=bool(params.get("combine", False)),
        )


# ---- the factor model --------------------------------------------------------------------------
def _ridge_gcv(X: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Ridge coefficients (p, m) of every column of R on X (both centred), one penalty for all
    columns chosen by generalised cross-validation."""
    n = len(X)
    U, s, Vt = np.linalg.svd(X, full_matrices=False)
    UtR = U.T @ R
    resid0 = float(np.sum(R**2) - np.sum(UtR**2))  # outside X's column space
    best: tuple[float, float] | None = None
    for c in _LAMBDAS:
        lam = c * n
        h = s**2 / (s**2 + lam)
        rss = resid0 + float(np.sum(((1.0 - h)[:, None] * UtR) ** 2))
        gcv = rss / max(1.0 - h.sum() / n, 1e-6) ** 2
        if best is None or gcv < best[0]:
            best = (gcv, lam)
    assert best is not None
    return Vt.T @ ((s / (s**2 + best[1]))[:, None] * UtR)


def _structure(R: np.ndarray, G: np.ndarray, B: np.ndarray | None, r: int) -> tuple[np.ndarray, ...]:
    """Rank-r loadings A, map W, noise s2 and Su from residual grades R (n, m) and their
    predictions G (the ridge fit X B; or the estimates, B = None: W is then empty)."""
    Vt = np.linalg.svd(G, full_matrices=False)[2]
    A = Vt[:r].T  # (m, r), orthonormal columns
    W = B @ A if B is not None else np.zeros((0, r))
    D = R @ A - G @ A  # the prompts' own deviations from g(x), plus projected noise
    E = R - (R @ A) @ A.T  # what the factors do not reach
    lev = np.clip(1.0 - np.sum(A**2, axis=1), 0.05, None)
    s2 = np.maximum(np.mean(E**2, axis=0) / lev, 1e-4)
    Su = np.cov(D, rowvar=False).reshape(r, r) - A.T @ np.diag(s2) @ A
    vals, vecs = np.linalg.eigh((Su + Su.T) / 2)
    Su = (vecs * np.maximum(vals, 1e-6)) @ vecs.T
    return A, W, s2, Su


def fit_factor_model(
    grades: np.ndarray,
    base_q: np.ndarray,
    emb: np.ndarray,
    ranks: tuple[int, ...] | None = None,
    seed: int = 0,
    inputs: str | None = None,
) -> FactorModel:
    """The known models' factor model from their training table (see the module docstring).

    grades: (n, m) the known models' qualities on n training prompts (NaN = not graded);
    base_q: (n, m) the router's clipped estimates there (phi does not use them today); emb:
    (n, d) their embeddings;
    ranks: the ranks tried (default 1 .. min(m - 2, 6)), the one whose simulated onboarding
    of the known models errs least is kept; inputs: one of `INPUTS` (default `DEFAULT_INPUTS`).
    Raises ValueError for fewer than 3 models or 20 prompts.
    """
    inputs = inputs or DEFAULT_INPUTS
    if inputs not in INPUTS:
        raise ValueError(f"unknown factor inputs {inputs!r}; use one of {INPUTS}")
    Y = np.asarray(grades, dtype=np.float64)
    n, m = Y.shape
    if m < 3 or n < 20:
        raise ValueError(
            f"a factor model needs >= 3 known models and >= 20 graded training prompts, got {m} and {n}: "
            "use --method paired or ridge for such a small router"
        )
    ok = np.isfinite(Y)
    b = np.where(ok, Y, 0.0).sum(axis=0) / np.maximum(ok.sum(axis=0), 1)
    R = np.where(ok, Y - b, 0.0)
    Phi = factor_inputs(base_q, emb)
    mu, sd = Phi.mean(axis=0), Phi.std(axis=0)
    sd = np.where(sd > 1e-8, sd, 1.0)
    X = (Phi - mu) / sd
    B: np.ndarray | None = None
    if inputs == "emb":
        B = _ridge_gcv(X, R)
        G = X @ B
    else:
        G = np.asarray(base_q, dtype=np.float64) - b
    if ranks is None:
        ranks = tuple(range(1, max(1, min(m - 2, 6)) + 1))
    errors: dict[int, float] = {}
    if len(ranks) > 1:
        errors = {r: _simulated_error(Y, R, G, B, r, seed) for r in ranks}
        r = min(errors, key=lambda k: errors[k])
    else:
        r = ranks[0]
    A, W, s2, Su = _structure(R, G, B, r)
    return FactorModel(mu=mu, sd=sd, W=W, A=A, b=b, s2=s2, Su=Su, rank_errors=errors, inputs=inputs)


def _simulated_error(
    Y: np.ndarray, R: np.ndarray, G: np.ndarray, B: np.ndarray | None, r: int, seed: int
) -> float:
    """Mean squared error of onboarding each known model from a random profile of its own
    training rows, with the rank-r factor model of the other known models (prompts outside the
    profile scored; z = 0)."""
    m = Y.shape[1]
    rng = np.random.default_rng(seed)
    errs = []
    for j in range(m):
        others = [i for i in range(m) if i != j]
        A, W, s2, Su = _structure(
            R[:, others], G[:, others], None if B is None else B[:, others], min(r, m - 1)
        )
        fm = FactorModel(
            mu=np.zeros(1), sd=np.ones(1), W=W, A=A, b=np.nanmean(Y[:, others], axis=0), s2=s2, Su=Su
        )
        g_all = G[:, others] @ A  # the other models' predicted factors (X B A = X W)
        graded = np.flatnonzero(np.isfinite(Y[:, j]))
        if len(graded) < 2 * _SIM_K:
            continue
        for _ in range(_SIM_DRAWS):
            pick = rng.choice(graded, _SIM_K, replace=False)
            known = Y[pick][:, others]
            theta = _fit_theta(fm, g_all[pick], known, Y[pick, j])[0]
            rest = np.setdiff1d(graded, pick)
            pred = np.hstack([g_all[rest], np.ones((len(rest), 1))]) @ theta
            errs.append(float(np.mean((pred - Y[rest, j]) ** 2)))
    return float(np.mean(errs)) if errs else float("inf")


# ---- a new model ---------------------------------------------------------------------------------
def _prior(fm: FactorModel) -> tuple[np.ndarray, np.ndarray]:
    """The known models' vectors (a_j, b_j): their mean and covariance (an empirical-Bayes prior)."""
    T = np.hstack([fm.A, fm.b[:, None]])
    mu0 = T.mean(axis=0)
    S0 = np.cov(T, rowvar=False).reshape(T.shape[1], T.shape[1])
    S0 = S0 + 1e-6 * max(float(np.trace(S0)), 1e-6) * np.eye(len(mu0))
    return mu0, S0


def _fit_theta(
    fm: FactorModel, g: np.ndarray, known: np.ndarray | None, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """Posterior (mean, covariance, noise variance) of theta = (a, b) from a profile."""
    F, _ = fm.posterior_factors(g, known)
    Z = np.hstack([F, np.ones((len(F), 1))])
    mu0, S0 = _prior(fm)
    P0 = np.linalg.inv(S0)
    s2 = max(float(np.var(y)), 1e-4)
    for _ in range(4):
        cov = np.linalg.inv(Z.T @ Z / s2 + P0)
        theta = cov @ (Z.T @ y / s2 + P0 @ mu0)
        s2 = max(float(np.sum((y - Z @ theta) ** 2)) / max(len(y) - 1, 1), 1e-4)
    cov = np.linalg.inv(Z.T @ Z / s2 + P0)
    theta = cov @ (Z.T @ y / s2 + P0 @ mu0)
    return theta, cov, s2


def fit_factor_profile(
    fm: FactorModel,
    base_q: np.ndarray,
    emb: np.ndarray,
    y: np.ndarray,
    known: np.ndarray | None = None,
    z: float = 1.0,
    anchor: bool | None = None,
    combine: bool = False,
) -> FactorFit:
    """Fit a new model's vector from its profile (see the module docstring).

    base_q: (k, m) the router's clipped estimates on the profile prompts; emb: (k, d) their
    embeddings; y: (k,) the new model's grades; known: (k, m) the known models' grades on the
    same prompts (NaN = not graded; None = none), which sharpen the prompts' factors; z: how
    many posterior sds the column is lowered by; anchor (default `DEFAULT_ANCHOR`): the column
    is the known models' average estimate plus the new model's difference from the average
    known model (the router's scale), instead of its own factor prediction; combine: the column
    is the known models' estimates weighted so that their vectors make the new one
    (`FactorFit.design`).
    """
    P = np.asarray(base_q, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    k = len(y)
    if k == 0 or len(P) != k or len(emb) != k:
        raise ValueError(
            f"need matching profile rows, got {len(P)} estimates, {k} grades, {len(emb)} embeddings"
        )
    if not np.all(np.isfinite(y)):
        raise ValueError("profile qualities must be finite (drop ungraded rows first)")
    if known is not None and np.shape(known) != P.shape:
        raise ValueError(f"known grades have shape {np.shape(known)}, expected {P.shape}")
    g = fm.factors(P, emb)
    theta, cov, s2 = _fit_theta(fm, g, known, y)
    closest = int(np.argmin(((y[:, None] - P) ** 2).mean(axis=0) + 1e-12 * np.arange(P.shape[1])))
    fit = FactorFit(
        model=fm,
        theta=theta,
        cov=cov,
        z=float(z),
        n_rows=k,
        loo_rmse=float(np.sqrt(s2)),
        closest=closest,
        noise=s2,
        anchor=DEFAULT_ANCHOR if anchor is None else bool(anchor),
        combine=combine,
    )
    if k >= 10:
        _residual_kernel(fit, P, g, known, y, np.asarray(emb, dtype=np.float64))
    return fit


def _residual_kernel(
    fit: FactorFit, P: np.ndarray, g: np.ndarray, known: np.ndarray | None, y: np.ndarray, E: np.ndarray
) -> None:
    """The shape the factors do not reach: the profile's residuals from the fitted vector (the
    prompts' posterior factors, so the known models' shared luck is out) smoothed over the
    embeddings, as `llmroute.estimators.profiled`'s residual stage does (cosine kernel, beta and
    kappa by leave-one-out on 5-fold held-out residuals, kept only when it beats "no residual"
    by one standard error). Sets fit.emb, resid, beta, kappa (in place)."""
    from llmroute.estimators.profiled import _BETAS, _KAPPAS, _kernel_loo

    fm, k = fit.model, len(y)
    # the residual of a prompt: its grade minus the column there, with the known models' shared
    # luck (its factors' deviation F - g, weighted by the vector's loadings) taken out
    dF = fm.posterior_factors(g, known)[0] - g
    folds = np.random.default_rng(0).permutation(k) % 5
    loo = np.empty(k)
    for f in range(5):
        te = folds == f
        th = _fit_theta(fm, g[~te], None if known is None else known[~te], y[~te])[0]
        loo[te] = y[te] - dF[te] @ th[:-1] - fit.column(th, g[te], P[te])
    err = float(np.mean(loo**2))
    se = float(np.std(loo**2) / np.sqrt(k))
    best = (err, 0.0, 0.0)
    for bt in _BETAS:
        for kp in _KAPPAS:
            e2 = float(np.mean((loo - _kernel_loo(E, loo, bt, kp)) ** 2))
            if e2 < min(best[0], err - se):
                best = (e2, bt, kp)
    if best[1] > 0:
        fit.emb = E.astype(np.float32)
        fit.resid = y - dF @ fit.theta[:-1] - fit.column(fit.theta, g, P)
        fit.beta, fit.kappa = best[1], best[2]
