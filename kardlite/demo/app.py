"""kardlite demo: ask the KARD pipeline a question in the browser and watch it retrieve, rerank and reason.

    kardlite demo [--bundle DIR] [--host 127.0.0.1] [--port 7860]     (or python -m kardlite.demo.app, app/demo.py)

Offline: no analytics, system fonts only, bound to 127.0.0.1 unless --host says otherwise. The layout lives here;
what is shown is computed by kardlite.demo.view from the runtime's Answer. Needs the ``app`` extra (gradio).
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from kardlite.demo import DISCLAIMER, demo_questions, view
from kardlite.demo.build import build_demo_bundle
from kardlite.errors import KardliteError, MissingExtraError

if TYPE_CHECKING:
    from kardlite.runtime import Pipeline


def _gradio() -> Any:
    """Import gradio with its telemetry off (the variable must be set before the import)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no analytics, no version check
    try:
        import gradio
    except ImportError:
        raise MissingExtraError("gradio", "app") from None
    return gradio


def _theme() -> Any:
    # Local font names only: a theme's web fonts would be fetched from the internet by the browser.
    gr = _gradio()
    return gr.themes.Default(font=("ui-sans-serif", "system-ui", "sans-serif"),
                             font_mono=("ui-monospace", "Consolas", "monospace"))


def build(pipe: Pipeline) -> Any:
    """The page: an Ask tab (question → passages, streamed rationale, answer, timings), a KB search tab and an
    About tab (the bundle, its ``kardlite demo eval`` numbers, its evaluation card, what the page's marks
    mean).

    Args:
        pipe: an open bundle (``kardlite.runtime.load``).

    Returns:
        The ``gradio.Blocks`` page, not yet launched.

    Raises:
        MissingExtraError: gradio (the ``app`` extra) is not installed.
    """
    gr = _gradio()
    stage = pipe.first_stage

    def about() -> str:
        """The About panel, read again on each page load: a `kardlite demo eval` run meanwhile shows up."""
        from kardlite.demo.evaluate import eval_paths, read_demo_eval

        evaluation, problem = None, None
        try:
            evaluation = read_demo_eval(pipe.path)
        except KardliteError as err:
            problem = str(err)
        return view.about_markdown(pipe.manifest, pipe.card, pipe.settings, evaluation=evaluation,
                                   manifest_sha256=pipe.manifest_sha256, eval_file=eval_paths(pipe.path)[0],
                                   problem=problem)

    def ask(question: str, options_text: str, samples: int, abstain_below: float):
        problem = view.check_input(question, options_text)
        if problem:
            gr.Warning(problem)
            yield f"**Refused:** {problem}", "", "", "", ""
            return
        shown_html, rationale = "", ""
        try:
            # 0 = always answer; above it, a less confident answer is withheld with its reason
            threshold = float(abstain_below) or None
            for event in pipe.stream(question, view.parse_options(options_text) or None, samples=int(samples),
                                     abstain_below=threshold):
                if event["type"] == "passages":
                    shown_html = view.passages_html(event["passages"])
                    yield view.answer_markdown(None, streaming=True), "", shown_html, "", ""
                elif event["type"] == "token" and event["sample"] == 0:  # stream the first sample
                    rationale += event["text"]
                    yield gr.skip(), rationale, gr.skip(), gr.skip(), gr.skip()
                elif event["type"] == "answer":
                    a = event["answer"]
                    written = a["rationale"] or a["text"]
                    yield (view.answer_markdown(a), written,
                           view.passages_html(a["passages"], written or None),
                           view.candidates_html(a["candidates"], a["passages"], stage), view.timings_markdown(a))
        except KardliteError as err:  # bad input the runtime caught (e.g. too long for the prompt budget)
            yield f"**Refused:** {view.md_text(err)}", rationale, shown_html, "", ""

    def search(query: str, retriever: str, k: int) -> str:
        problem = view.check_input(query, None)
        if problem:
            return f"<p><b>Refused:</b> {problem}</p>"
        return view.hits_html(pipe.kb.search(query, k=int(k), retriever=retriever))

    with gr.Blocks(title="kardlite demo") as page:
        gr.Markdown(f"# kardlite: knowledge-augmented reasoning on a laptop CPU\n"
                    f"**{DISCLAIMER}** Answers come from a 135M-parameter student; they are often wrong.\n\n"
                    f"{view.bundle_line(pipe.manifest)}"
                    f"{view.audit_line(pipe.audit.path if pipe.audit is not None else None)}", elem_id="disclaimer",
                    latex_delimiters=[])
        with gr.Tab("Ask"):
            with gr.Row():
                with gr.Column(scale=2):
                    question = gr.Textbox(label="Question", lines=4, elem_id="question")
                    options = gr.Textbox(label="Answer options (optional, one per line)", lines=4, elem_id="options")
                    samples = gr.Slider(1, 5, value=1, step=1, label="Samples (more than 1: majority vote)")
                    abstain = gr.Slider(0.0, 1.0, value=0.0, step=0.05, elem_id="abstain",
                                        label="Abstain below confidence (0 = always answer)")
                    go = gr.Button("Ask", variant="primary", elem_id="ask")
                    gr.Examples(view.examples(demo_questions("test")), [question, options], label="Demo test questions",
                                examples_per_page=6)
                with gr.Column(scale=3):
                    # no LaTeX: "$$" in model text would otherwise be typeset after the markdown is rendered
                    answer = gr.Markdown(elem_id="answer", latex_delimiters=[])
                    # an answer-only student (ft, ka-ft) writes nothing: its options are scored, the box says so
                    note = view.ANSWER_ONLY_NOTE if pipe.answer_only else None
                    rationale = gr.Textbox(label="Rationale (streamed as the student writes it)", lines=6,
                                           interactive=False, elem_id="rationale", placeholder=note)
                    gr.Markdown("**Passages shown to the student** (marked: the sentences the rationale repeats)")
                    passages = gr.HTML(elem_id="passages")
                    with gr.Accordion(f"First-stage candidates ({stage}) and timings", open=True):
                        candidates = gr.HTML(elem_id="candidates")
                        timings = gr.Markdown(elem_id="timings", latex_delimiters=[])
            outputs = [answer, rationale, passages, candidates, timings]
            go.click(ask, [question, options, samples, abstain], outputs)
            question.submit(ask, [question, options, samples, abstain], outputs)
        with gr.Tab("Search the knowledge base"):
            with gr.Row():
                query = gr.Textbox(label="Query", scale=4, elem_id="kb-query")
                retriever = gr.Radio(["hybrid", "bm25", "dense"], value="hybrid", label="Retriever", scale=2)
                k = gr.Slider(1, 20, value=5, step=1, label="Results", scale=1)
            find = gr.Button("Search", elem_id="kb-search")
            hits = gr.HTML(elem_id="kb-hits")
            find.click(search, [query, retriever, k], hits)
            query.submit(search, [query, retriever, k], hits)
        with gr.Tab("About this bundle"):
            about_panel = gr.Markdown(about(), elem_id="about", latex_delimiters=[])
        page.load(about, None, about_panel, show_progress="hidden")
    return page


def _positive_int(text: str) -> int:
    """argparse type of --threads: an integer >= 1 (0 or a negative count is a usage error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, open the bundle (building the demo one if none is given) and serve the page."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", help="bundle folder (default: the demo bundle, built on first run)")
    parser.add_argument("--fast", action="store_true", help="build the fast, untrained demo bundle (KARDLITE_FAST=1)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--threads", type=_positive_int, default=None, help="CPU threads (default: all)")
    parser.add_argument("--audit-log", default=None, help="append one JSONL record per answer to this file")
    args = parser.parse_args(argv)
    _gradio()  # a missing extra fails here, before minutes of bundle building
    bundle = args.bundle or build_demo_bundle(fast=True if args.fast else None)
    from kardlite.runtime import load

    pipe = load(bundle, threads=args.threads, audit_log=args.audit_log)
    print(f"kardlite demo: {pipe!r}", flush=True)
    build(pipe).queue().launch(server_name=args.host, server_port=args.port, theme=_theme(), footer_links=["settings"],
                               show_error=True)


if __name__ == "__main__":
    main()
