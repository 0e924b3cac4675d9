# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # i2x walkthrough
#
# Train a small CNN on scikit-learn's digits, replay its checkpoints, and read what i2x finds:
# prototypes, how the model's reliance on them formed, which prototype swings between two classes,
# and whether curating the training set around it helps. Everything runs on a laptop CPU in a
# couple of minutes; nothing is downloaded.

# %%
import tempfile
from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd

import i2x

work = Path(tempfile.mkdtemp(prefix="i2x-walkthrough-"))
ckpts, out = work / "checkpoints", work / "analysis"

# %% [markdown]
# ## 1. Train, keeping one snapshot per epoch
# `i2x.train` is the reference trainer; with your own model you would point i2x at your own
# checkpoint directory instead.

# %%
trained = i2x.train(data="digits", model="small-cnn", out=ckpts, epochs=6, progress=False)
print(f"test accuracy {trained.test_accuracy:.3f}; snapshots: {[p.name for p in trained.checkpoints]}")

# %% [markdown]
# ## 2. Run the pipeline: extract, analyze, report
# One forward and one backward per batch and checkpoint give the probabilities, GradCAM, GradCAM++ and
# LayerCAM maps and the final features; the analysis clusters the features into prototypes and fits
# ridge maps from prototype-intensity changes to confidence changes.

# %%
result = i2x.run(checkpoints=str(ckpts), model="small-cnn", data="digits", out=out, limit=600, progress=False)
summary = result.summary
print(f"layer {summary['layer']} grid {summary['grid']}, {summary['k']} prototypes")
print("accuracy per checkpoint:", [round(a, 3) for a in summary["accuracy"]])
print("report:", result.report_path)

# %% [markdown]
# ## 3. Accuracy over training, and the β map at the last step
# The store is a Zarr group; `i2x.Store` reads it (so does `xarray.open_zarr`).

# %%
store = i2x.Store.open(out)
steps = [c["step"] for c in summary["checkpoints"]]
alt.Chart(pd.DataFrame({"step": steps, "accuracy": summary["accuracy"]})).mark_line(point=True).encode(
    x="step:Q", y=alt.Y("accuracy:Q", scale=alt.Scale(zero=False)), tooltip=["step", "accuracy"]
).properties(width=400, height=200, title="training-split accuracy per checkpoint")

# %%
beta = store.read("analysis/beta")  # [step, prototype, class]
last = pd.DataFrame(
    [(k, summary["classes"][m], float(beta[-1, k, m])) for k in range(beta.shape[1]) for m in range(beta.shape[2])],
    columns=["prototype", "class", "beta"],
)
alt.Chart(last).mark_rect().encode(
    x="class:N", y="prototype:O", color=alt.Color("beta:Q", scale=alt.Scale(scheme="redblue", domainMid=0)),
    tooltip=["prototype", "class", "beta"],
).properties(title="β: confidence change per unit of prototype-intensity change, last step")

# %% [markdown]
# ## 4. An uncertain prototype: where it sits and how it flips
# An uncertain prototype's strongest class (argmax of β) flips between the same two classes during training.

# %%
uncertain = summary["uncertain"]
print(f"{len(uncertain)} uncertain prototypes")
if uncertain:
    u = uncertain[0]
    k, (a, b) = u["prototype"], u["classes"]
    print(f"prototype {k} swings between {u['class_names'][0]} and {u['class_names'][1]} ({u['flips']} flips)")
    traj = pd.DataFrame({"step": np.arange(beta.shape[0]).repeat(2),
                         "class": [summary["classes"][c] for _ in range(beta.shape[0]) for c in (a, b)],
                         "beta": beta[:, k, [a, b]].ravel()})
    chart = alt.Chart(traj).mark_line(point=True).encode(x="step:O", y="beta:Q", color="class:N")
else:
    chart = alt.Chart(pd.DataFrame({"note": ["no uncertain prototype at these thresholds"]})).mark_text().encode(text="note")
chart

# %%
if uncertain:
    assign = store.read("analysis/assign")
    where = (assign == k).mean(axis=0)  # how often each grid cell holds the prototype
    cells = pd.DataFrame([(i, j, float(where[i, j])) for i in range(where.shape[0]) for j in range(where.shape[1])],
                         columns=["row", "col", "share"])
    display_chart = alt.Chart(cells).mark_rect().encode(x="col:O", y="row:O", color="share:Q", tooltip=["share"])
    display_chart = display_chart.properties(title=f"where prototype {k} occurs (share of samples per cell)")
else:
    display_chart = None
display_chart

# %% [markdown]
# ## 5. Curated fine-tuning
# Leave out the training samples of the pair's classes that the uncertain prototype covers, fine-tune
# one epoch on that curated set, then one epoch on everything; compare with two full epochs.
# Curation uses the significant uncertain prototypes (their flips clear the β intervals and the null model);
# when none is significant, as on a short run like this one, `all_uncertain=True` curates from every flagged one.
# (One seed here to keep the walkthrough short; the CLI default is five.)

# %%
if uncertain:
    significant = any(u.get("significant") for u in uncertain)
    ft = i2x.finetune(out, strategies=("full-full", "curated-full"), seeds=1, all_uncertain=not significant,
                      progress=False)
    print(i2x.format_table(ft))

# %% [markdown]
# The full report, with the prototype gallery, film strips and interactive charts, is a single HTML
# file that opens offline:

# %%
print(result.report_path)
