import sys, numpy as np, pandas as pd
import medtwin.glucose.identify as I
from medtwin.glucose.identify import fit_map_cohort
from medtwin.glucose.insilico import simulate_therapy_a, true_glucose
from medtwin.glucose.therapy import apply_therapy, Therapy
from medtwin.glucose.twin_model import population_prior
from medtwin.glucose.twin_validation import _member, _tir
names=list(pd.read_csv('/work/shared/data/uvapadova/Quest.csv').Name)
tot={}
for seed in map(int, sys.argv[1:]):
    sim=simulate_therapy_a(names, days=2, seed=seed)
    priors=[population_prior(n.split('#')[0], exclude=[n]) for n in names]
    a=list(sim.data); b=[apply_therapy(d, Therapy(bolus_scale=1.3)) for d in a]
    true_b=[true_glucose(_member(sim.cohort,k),[b[k]])[:,0] for k in range(30)]
    def dtir(found):
        out=[]
        for k,(theta,model) in enumerate(found):
            bg=model.simulate(theta[None,:-1], b[k], initial_glucose_mg_dl=float(np.exp(theta[-1])))[:,0]
            n=min(bg.size,true_b[k].size); out.append(_tir(bg[:n,None])[0]-_tir(true_b[k][:n,None])[0])
        return np.array(out)
    for df in (None, 4.0):
        I.PRIOR_DF=df
        d=dtir(fit_map_cohort(a, priors))
        tot.setdefault(df,[]).append(np.abs(d)<=5)
        print(f"seed {seed} df {df}: within5 {np.sum(np.abs(d)<=5)}/30 median {np.median(np.abs(d)):.1f} signed {d.mean():+.1f}", flush=True)
        print('   ', ' '.join(f"{x:+.0f}" for x in d), flush=True)
for df,v in tot.items(): print('pooled', df, f"{100*np.mean(np.concatenate(v)):.1f}%")
