"""The UVA/Padova 2008 type 1 diabetes model, exactly as simglucose 0.2.11 implements it.

Source
------
Dalla Man C, Rizza RA, Cobelli C. Meal simulation model of the glucose-insulin system. IEEE Trans Biomed Eng
2007;54(10):1740-9, doi:10.1109/TBME.2007.893506; Kovatchev BP, Breton M, Dalla Man C, Cobelli C. In silico
preclinical trials: a proof of concept in closed-loop control of type 1 diabetes. J Diabetes Sci Technol
2009;3(1):44-55, doi:10.1177/193229680900300106 (the 2008 FDA-accepted simulator). Implementation followed:
simglucose 0.2.11 (Jinyu Xie, MIT licence), ``simglucose/patient/t1dpatient.py``; the 30 virtual patients
are its ``vpatient_params.csv``.

Conventions (those of simglucose, kept on purpose so results are comparable)
-----------------------------------------------------------------------------
- Time in minutes; 13 states: Qsto1, Qsto2, Qgut (mg); Gp, Gt (mg/kg); Ip (pmol/kg); X (1/min); I' (pmol/L);
  Id (pmol/L); Il (pmol/kg); Isc1, Isc2 (pmol/kg); Gs (mg/kg).
- Inputs: carbohydrate d (mg/min) = CHO (g/min) x 1000; insulin (pmol/kg/min) = U/min x 6000 / BW; and
  ``dbar_mg``, the amount of the meal being digested in mg: ``Qsto at meal start (mg) + carbohydrate eaten
  since (g) x 1000``, as simglucose computes it (``last_Qsto + last_foodtaken * 1000``) and as the caller
  (:class:`medtwin.glucose.simulation.PatientBatch`) passes it.
- Gastric emptying kgut = kmin + (kmax - kmin)/2 [tanh(a(Qsto - b Dbar)) - tanh(c(Qsto - d Dbar)) + 2],
  a = 5/(2 Dbar (1 - b)), c = 5/(2 Dbar d); kgut = kmax when Dbar = 0.
- EGP = max(kp1 - kp2 Gp - kp3 Id, 0); renal excretion ke1 (Gp - ke2) above ke2; insulin-independent
  utilisation Fsnc; insulin-dependent Vm(X) Gt / (Km0 + Gt).
- Non-negativity as in simglucose: dx_i/dt is set to 0 while x_i < 0 for Gp, Gt, Ip, Il, Isc1, Isc2, Gs.
- Output glucose "BG" = Gs / Vg (subcutaneous, mg/dL); plasma glucose = Gp / Vg.
Validity: adult, adolescent and child type 1 virtual subjects of the 2008 simulator; glucose 20-600 mg/dL;
meals and subcutaneous insulin only (no exercise, no glucagon, no intraday variability).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from medtwin.sim.model import FloatArray, Model, Params

__all__ = ["PMOL_PER_UNIT_INSULIN", "STATE_NAMES", "UvaPadova2008"]

PMOL_PER_UNIT_INSULIN = 6000.0
"""1 U of insulin = 6000 pmol, the convention of the 2008 simulator and simglucose (modern value 6.0 nmol/U)."""

STATE_NAMES = (
    "Qsto1_mg",
    "Qsto2_mg",
    "Qgut_mg",
    "Gp_mg_kg",
    "Gt_mg_kg",
    "Ip_pmol_kg",
    "X_per_min",
    "I1_pmol_l",
    "Id_pmol_l",
    "Il_pmol_kg",
    "Isc1_pmol_kg",
    "Isc2_pmol_kg",
    "Gs_mg_kg",
)


class UvaPadova2008(Model):
    """The 13-state UVA/Padova 2008 model vectorized over a batch of virtual patients."""

    state_names: ClassVar[tuple[str, ...]] = STATE_NAMES
    state_units: ClassVar[tuple[str, ...]] = (
        "mg",
        "mg",
        "mg",
        "mg/kg",
        "mg/kg",
        "pmol/kg",
        "1/min",
        "pmol/L",
        "pmol/L",
        "pmol/kg",
        "pmol/kg",
        "pmol/kg",
        "mg/kg",
    )
    param_names: ClassVar[tuple[str, ...]] = (
        "BW", "kabs", "kmax", "kmin", "b", "d", "f", "kp1", "kp2", "kp3", "Fsnc", "ke1", "ke2",
        "k1", "k2", "Vm0", "Vmx", "Km0", "m1", "m2", "m4", "m30", "Vi", "p2u", "Ib", "ki",
        "ka1", "ka2", "kd", "ksc", "Vg", "u2ss",
    )  # fmt: skip
    param_units: ClassVar[tuple[str, ...]] = (
        "kg", "1/min", "1/min", "1/min", "1", "1", "1", "mg/kg/min", "1/min", "mg/kg/min per pmol/L",
        "mg/kg/min", "1/min", "mg/kg", "1/min", "1/min", "mg/kg/min", "mg/kg/min per pmol/L", "mg/kg",
        "1/min", "1/min", "1/min", "1/min", "L/kg", "1/min", "pmol/L", "1/min", "1/min", "1/min", "1/min",
        "1/min", "dL/kg", "pmol/kg/min",
    )  # fmt: skip
    input_names: ClassVar[tuple[str, ...]] = ("cho_mg_min", "insulin_pmol_kg_min", "dbar_mg")
    input_units: ClassVar[tuple[str, ...]] = ("mg/min", "pmol/kg/min", "mg")

    def kgut(self, qsto: FloatArray, dbar: FloatArray, p: Params) -> FloatArray:
        """Gastric emptying rate (1/min) for stomach content *qsto* and meal amount *dbar*."""
        kmax, kmin, b, d = p["kmax"], p["kmin"], p["b"], p["d"]
        digesting = dbar > 0
        safe = np.where(digesting, dbar, 1.0)
        aa = 2.5 / ((1.0 - b) * safe)
        cc = 2.5 / (d * safe)
        k = kmin + 0.5 * (kmax - kmin) * (np.tanh(aa * (qsto - b * safe)) - np.tanh(cc * (qsto - d * safe)) + 2.0)
        return np.where(digesting, k, kmax)

    def rhs(self, t: float, x: FloatArray, p: Params, u: FloatArray) -> FloatArray:
        xt = x.T
        qsto1, qsto2, qgut, gp, gt, ip, xx, i1, i_d, il, isc1, isc2, gs = xt
        cho, insulin, dbar = u[:, 0], u[:, 1], u[:, 2]
        kmax = p["kmax"]
        kgut = self.kgut(qsto1 + qsto2, dbar, p)
        dx = np.empty_like(xt)
        dx[0] = cho - kmax * qsto1
        dx[1] = kmax * qsto1 - kgut * qsto2
        dx[2] = kgut * qsto2 - p["kabs"] * qgut
        ra = p["f"] * p["kabs"] * qgut / p["BW"]
        egp = np.maximum(p["kp1"] - p["kp2"] * gp - p["kp3"] * i_d, 0.0)
        renal = p["ke1"] * np.maximum(gp - p["ke2"], 0.0)
        k1gp = p["k1"] * gp
        k2gt = p["k2"] * gt
        dx[3] = np.where(gp >= 0, egp + ra - p["Fsnc"] - renal - k1gp + k2gt, 0.0)
        uid = (p["Vm0"] + p["Vmx"] * xx) * gt / (p["Km0"] + gt)
        dx[4] = np.where(gt >= 0, k1gp - uid - k2gt, 0.0)
        ka1isc1 = p["ka1"] * isc1
        ka2isc2 = p["ka2"] * isc2
        dip = -(p["m2"] + p["m4"]) * ip + p["m1"] * il + ka1isc1 + ka2isc2
        dx[5] = np.where(ip >= 0, dip, 0.0)
        it = ip / p["Vi"]
        dx[6] = p["p2u"] * (it - p["Ib"] - xx)
        dx[7] = p["ki"] * (it - i1)
        dx[8] = p["ki"] * (i1 - i_d)
        dx[9] = np.where(il >= 0, p["m2"] * ip - (p["m1"] + p["m30"]) * il, 0.0)
        kdisc1 = p["kd"] * isc1
        dx[10] = np.where(isc1 >= 0, insulin - ka1isc1 - kdisc1, 0.0)
        dx[11] = np.where(isc2 >= 0, kdisc1 - ka2isc2, 0.0)
        dx[12] = np.where(gs >= 0, p["ksc"] * (gp - gs), 0.0)
        return dx.T

    def outputs(self, x: FloatArray, p: Params) -> dict[str, FloatArray]:
        vg = p["Vg"]
        return {"bg_mg_dl": x[..., 12] / vg, "plasma_glucose_mg_dl": x[..., 3] / vg}
