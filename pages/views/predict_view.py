"""The Predict page's single-image view and its management panel (Streamlit only).

Kept in a sub-folder: Streamlit lists every top-level file of pages/ as a page of its own."""

from __future__ import annotations

import hashlib

import plotly.express as px
import streamlit as st

from pages._ui import DISCLAIMER, thumbnail_uri
from skin_core.app.predict import (
    member_probability_frame,
    meta_comparison,
    predict_with_and_without,
    referral_text,
    result_json,
    result_report_html,
    similar_cases,
)
from skin_core.app.quality_panel import quality_strip, quality_strip_figure, sharpness_percentile
from skin_core.errors import ConfigError, SkinCoreError
from skin_core.management import (
    CostTable,
    cost_table_yaml,
    default_cost_table,
    read_cost_table,
    suggest_management,
)
from skin_core.predict import OOD_WARNING

#: Similar training images shown per upload.
N_SIMILAR = 8


def cost_table_editor(classes: list[str]) -> None:
    """The clinic's editable cost table (kept in session state as ``cost_table``)."""
    if st.session_state.get("cost_table_classes") != classes:
        try:
            st.session_state["cost_table_base"] = default_cost_table().resolve(classes)
        except ConfigError:
            st.session_state["cost_table_base"] = None  # a model with its own class names
        st.session_state["cost_table_classes"] = classes
        st.session_state.pop("cost_editor", None)
    with st.expander("Management cost table (editable)", icon=":material/table_edit:"):
        st.caption("Cost of each action (rows) when the lesion's true class is each class "
                   "(columns); 0 = the right action. The defaults are ILLUSTRATIVE: your clinic "
                   "must set its own (docs/management.md).")
        own = st.file_uploader("Load your clinic's table (YAML or JSON)",
                               type=["yaml", "yml", "json"], key="cost_file")
        if own is not None:
            try:
                st.session_state["cost_table_base"] = read_cost_table(
                    own.getvalue(), filename=own.name, classes=classes).resolve(classes)
            except ConfigError as exc:
                st.error(str(exc))
        base, table = st.session_state["cost_table_base"], None
        if base is None:
            st.info("No default table covers this model's classes; load a table for them.")
        else:
            edited = st.data_editor(
                base.to_frame(), key="cost_editor", num_rows="fixed",
                column_config={c: st.column_config.NumberColumn(c, min_value=0.0, step=1.0)
                               for c in base.classes})
            try:
                table = base if edited.equals(base.to_frame()) else CostTable.from_frame(
                    edited, classes=classes, name="edited on this page")
            except ConfigError as exc:
                st.error(str(exc))
                table = base
            st.download_button("Download this table (YAML)", cost_table_yaml(table),
                               file_name="cost-table.yaml", mime="application/x-yaml")
    st.session_state["cost_table"] = table


def management_panel(result) -> None:
    """What to do (Bayes action under the cost table), with the table that produced it."""
    table = st.session_state.get("cost_table")
    if table is None:
        return
    s = suggest_management(result, table)
    with st.container(border=True):
        (st.warning if s.action == "refer" else st.info)(
            f"**Suggested management: {s.label}.** {s.reason}",
            icon=":material/medical_services:")
        if s.expected_costs:
            st.dataframe(s.expected_cost_frame(), hide_index=True, column_config={
                "expected_cost": st.column_config.NumberColumn("expected cost",
                                                               format="%.2f")})
        with st.expander("The cost table that produced it"):
            st.dataframe(s.table.to_frame())
            for note in s.table.notes:
                st.caption(note)


def similar_panel(result, dataset_spec: str | None) -> None:
    """The most similar training images (one per lesion) with their diagnoses."""
    hits = similar_cases(result, dataset_spec)
    if not hits:
        return
    st.markdown("**Similar training cases** (by the networks' own features, one image per "
                "lesion): compare them with this lesion before trusting the diagnosis.")
    cols = st.columns(min(len(hits), 8))
    for i, h in enumerate(hits):
        c = cols[i % len(cols)]
        caption = f"{h['label']} · {h['similarity']:.2f}"
        if h["path"]:
            c.image(thumbnail_uri(h["path"]), caption=caption, width="stretch")
        else:
            c.markdown(f"`{h['image_id']}`  \n{caption}")
    votes = {}
    for h in hits:
        votes[h["label"]] = votes.get(h["label"], 0) + 1
    st.caption("Diagnoses among them: " + ", ".join(
        f"{k} {v}" for k, v in sorted(votes.items(), key=lambda kv: -kv[1])))


def show_single(predictor, name: str, data: bytes, *, age, sex, site, bundle_key: str,
                notice: str | None, dataset_spec: str | None) -> None:
    """Everything about one uploaded image."""
    classes = list(predictor.classes)
    cache = st.session_state.setdefault("predictions", {})
    key = (hashlib.sha256(data).hexdigest(), age, sex, site, bundle_key)
    st.divider()
    st.subheader(name)
    if key not in cache:
        try:
            with st.spinner("Analysing…"):
                cache[key] = predict_with_and_without(predictor, data, name=name, age=age,
                                                      sex=sex, site=site, similar=N_SIMILAR)
        except SkinCoreError as exc:
            st.error(str(exc), icon=":material/error:")
            return
        if len(cache) > 32:
            cache.pop(next(iter(cache)))
    result, without = cache[key]
    probs = result.meta_probs or result.probs
    ref = result.referral
    if result.ood.get("flagged"):  # first, whatever the classes say
        st.error(f"**{OOD_WARNING}**", icon=":material/block:")
    if notice:  # above every diagnosis, not only at the top of the page
        st.error(f"**{notice}**", icon=":material/science:")

    m = st.columns(4)
    m[0].metric("Top diagnosis", result.label,
                help="Calibrated meta-classifier when the bundle has one, else the ensemble")
    m[1].metric("Calibrated probability", f"{probs[result.label]:.0%}")
    m[2].metric(f"Prediction set ({result.coverage or 0:.0%} coverage)",
                ", ".join(result.prediction_set))
    m[3].metric("Referral risk", "–" if ref.get("risk") is None else f"{ref['risk']:.0%}")
    if ref.get("refer"):
        st.error("**Refer for specialist review.** "
                 + " ".join(f"• {t}." for t in referral_text(ref)), icon=":material/emergency:")
    else:
        st.success("No referral reason found.", icon=":material/check_circle:")
    management_panel(result)

    c_img, c_heat, c_bars = st.columns([1, 1, 2])
    c_img.image(data, caption="Original", width="stretch")
    if result.overlay is not None:
        c_heat.image(result.overlay, caption=f"Heatmap ({result.heatmap_member}), "
                     "semi-transparent over the photo", width="stretch")
    bars = member_probability_frame(result, classes)
    fig = px.bar(bars, x="class", y="probability", color="source", barmode="group",
                 title="Probabilities per architecture, ensemble and meta-classifier",
                 category_orders={"class": classes})
    fig.update_yaxes(range=[0, 1])
    fig.update_layout(height=320, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      legend={"orientation": "h", "y": -0.2})
    c_bars.plotly_chart(fig, width="stretch", key=f"bars-{key[0]}")
    similar_panel(result, dataset_spec)

    st.markdown("**Meta-classifier with and without metadata**")
    st.dataframe(meta_comparison(result, without), hide_index=True,
                 column_config={"probability": st.column_config.NumberColumn(format="%.3f")})

    q = result.quality
    with st.container(border=True):
        st.markdown("**Image quality**")
        qc = st.columns([1, 1, 3])
        qc[0].metric("Blur score", f"{q['blur_score']:.2f}",
                     help="0 = very blurry, 1 = sharp; below 0.5 is called blurry")
        pct, measure = sharpness_percentile(q)
        qc[1].metric("Sharper than", "–" if pct is None else f"{pct:.0f}%",
                     help="Share of the training images this image is sharper than (by "
                     + ("the Laplacian variance, which keeps its spread where the blur score "
                        "is 1.0 for most images)" if measure == "laplacian_var"
                        else "the blur score)"))
        strip = quality_strip(q, predictor.bundle.quality_reference)
        if not strip.empty:
            n_ref = (predictor.bundle.quality_reference or {}).get("n_images")
            qc[2].plotly_chart(quality_strip_figure(strip, n_reference=n_ref),
                               width="stretch", key=f"q-{key[0]}")
        (st.warning if q.get("low_quality") else st.caption)(q["warning"])
    for w in result.warnings:
        if w not in (q.get("warning"), OOD_WARNING):
            st.warning(w)

    d1, d2 = st.columns(2)
    d1.download_button("Download result (JSON)", result_json(result, without),
                       file_name=f"{result.image_id}.json", mime="application/json",
                       key=f"json-{key[0]}")
    from skin_core.data.images import read_image

    report = result_report_html(result, original=read_image(data, reduce_to=(480, 480)),
                                without=without, disclaimer=DISCLAIMER, notice=notice)
    d2.download_button("Download one-page report (HTML)", report,
                       file_name=f"{result.image_id}-report.html", mime="text/html",
                       key=f"html-{key[0]}")
