"""The compliance report laid out as PDF by ReportLab, straight from the report document.

The PDF is drawn from the same dictionary the JSON and HTML come from (not converted from the
HTML): title and summary, one table per standard whose requirements link to their checks, one
section per check with its verdict, reason, remediation and evidence, then every cited audit
entry once with its inclusion proof, and the checkpoint the proofs refer to. Each check is a
named destination (its id), each cited audit entry is ``entry-N``, each cited setting is
``setting-NAME``; every reference to one is a PDF link to it.

Only the PDF base-14 fonts are used (Helvetica, Courier): no font file is read or embedded and
nothing outside the document is loaded. Every string from the report is escaped before it
reaches ReportLab's paragraph markup; long unbroken values (hashes, entries, signatures) are cut
into fixed-width lines so they stay on the page. The same document gives the same bytes
(ReportLab's invariant mode: no random file id; the creation date is the report's own time).
"""

from __future__ import annotations

import html
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.pdfbase.pdfdoc import LinkAnnotation, PDFArray, PDFDictionary, PDFString
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import (
    Flowable,
    KeepTogether,
    Paragraph,
    Preformatted,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

from iotguard.compliance import Status

__all__ = ["PROOF_LINE_CHARS", "render_pdf"]

#: Characters per line of a preformatted proof or checkpoint (Courier 7 pt on A4 with 18 mm margins).
PROOF_LINE_CHARS = 96

_STATUS_COLOUR = {Status.PASS.value: "#1b6e20", Status.FAIL.value: "#a61b1b", Status.NOT_APPLICABLE.value: "#555555"}
_LINK = '<a href="#{dest}" color="#1a4f9c">{text}</a>'


class _Styles:
    def __init__(self) -> None:
        base = getSampleStyleSheet()
        self.title = ParagraphStyle("t", parent=base["Title"], fontName="Helvetica-Bold", fontSize=18, spaceAfter=4)
        self.h2 = ParagraphStyle("h2", parent=base["Heading2"], fontName="Helvetica-Bold", fontSize=13,
                                 spaceBefore=10, spaceAfter=4)
        self.h3 = ParagraphStyle("h3", parent=base["Heading3"], fontName="Helvetica-Bold", fontSize=10.5,
                                 spaceBefore=8, spaceAfter=2)
        self.body = ParagraphStyle("b", parent=base["BodyText"], fontName="Helvetica", fontSize=9, leading=11.5,
                                   spaceAfter=3)
        self.cell = ParagraphStyle("c", parent=self.body, fontSize=8.5, leading=10.5, spaceAfter=0)
        self.item = ParagraphStyle("i", parent=self.body, leftIndent=10, bulletIndent=0, spaceAfter=2)
        self.mono = ParagraphStyle("m", parent=self.body, fontName="Courier", fontSize=7, leading=8.5,
                                   leftIndent=10, spaceAfter=4)


def _t(value: object) -> str:
    """A report value as paragraph text: escaped, so no report string is read as markup."""
    return html.escape(str(value), quote=True)


def _code(value: object) -> str:
    return f'<font face="Courier">{_t(value)}</font>'


def _status(status: str) -> str:
    colour = _STATUS_COLOUR.get(status, "#000000")
    return f'<font color="{colour}"><b>{_t(status.replace("_", " "))}</b></font>'


def _link(dest: str, text: str) -> str:
    return _LINK.format(dest=_t(dest), text=text)


def _anchor(dest: str) -> str:
    return f'<a name="{_t(dest)}"/>'


def _setting_dest(name: str) -> str:
    return "setting-" + name


def _fixed_lines(text: str, width: int = PROOF_LINE_CHARS) -> str:
    """Cut every line of ``text`` into pieces of at most ``width`` characters."""
    out: list[str] = []
    for line in text.splitlines() or [""]:
        out.extend(line[i:i + width] for i in range(0, max(len(line), 1), width))
    return "\n".join(out)


def _audit_entries(doc: dict[str, Any]) -> dict[str, tuple[dict[str, Any], list[str]]]:
    """Each cited audit entry once (by sequence number), with the ids of the checks citing it."""
    entries: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for check in doc["checks"]:
        for e in check["evidence"]:
            if e["kind"] == "audit":
                entries.setdefault(str(e["ref"]), (e, []))[1].append(check["id"])
    return dict(sorted(entries.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else -1))


def _settings(doc: dict[str, Any]) -> dict[str, tuple[dict[str, Any], list[str]]]:
    found: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for check in doc["checks"]:
        for e in check["evidence"]:
            if e["kind"] == "config":
                found.setdefault(str(e["ref"]), (e, []))[1].append(check["id"])
    return dict(sorted(found.items()))


def _provisions(doc: dict[str, Any]) -> dict[str, str]:
    """For each check id, the requirements of each standard that it is judged for (``ETSI ...: 5.1, 5.12``)."""
    by_check: dict[str, dict[str, list[str]]] = {}
    for name, requirements in doc["standards"].items():
        for q in requirements:
            for check_id in q["checks"]:
                by_check.setdefault(check_id, {}).setdefault(name, []).append(str(q["id"]))
    return {c: "; ".join(f"{name} {', '.join(ids)}" for name, ids in per.items()) for c, per in by_check.items()}


def _summary(doc: dict[str, Any], s: _Styles) -> Iterator[Flowable]:
    yield Paragraph("iotguard compliance report", s.title)
    fleet = doc.get("fleet", {})
    devices = ", ".join(f"{_t(n)} {_t(st)}" for st, n in fleet.get("devices", {}).items()) or "no"
    models = ", ".join(_t(m) for m in fleet.get("models", ())) or "none"
    yield Paragraph(f"Generated {_t(doc['generated_at'])} from the live state of the fleet: {devices} device(s); "
                    f"models {models}; {_t(fleet.get('audit_entries', 0))} audit-log entries.", s.body)
    summary = doc["summary"]
    failing = [_link(c["id"], _t(c["id"])) for c in doc["checks"] if c["status"] == "fail"]
    yield Paragraph(f"Checks: <b>{_t(summary['pass'])}</b> pass, <b>{_t(summary['fail'])}</b> fail, "
                    f"<b>{_t(summary['not_applicable'])}</b> not applicable."
                    + (f" Failing: {', '.join(failing)}." if failing else ""), s.body)
    yield Paragraph("Every cited audit entry carries an RFC 9162 inclusion proof against the checkpoint at the end "
                    f"of this report (log {_code(doc.get('log_origin', ''))}); verify offline with the log's public "
                    "key (<font face=\"Courier\">iotguard audit proof</font> format).", s.body)


def _standards(doc: dict[str, Any], s: _Styles) -> Iterator[Flowable]:
    for name, requirements in doc["standards"].items():
        yield Paragraph(_t(name), s.h2)
        rows: list[list[Any]] = [[Paragraph(f"<b>{h}</b>", s.cell) for h in ("Req.", "Title", "Result", "Checks")]]
        for q in requirements:
            checks = ", ".join(_link(c, _t(c)) for c in q["checks"])
            rows.append([Paragraph(_t(q["id"]), s.cell), Paragraph(_t(q["title"]), s.cell),
                         Paragraph(_status(q["status"]), s.cell), Paragraph(checks, s.cell)])
        table = Table(rows, colWidths=[14 * mm, 72 * mm, 24 * mm, 64 * mm], repeatRows=1)
        table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"),
                                   ("LINEBELOW", (0, 0), (-1, 0), 0.6, colors.black),
                                   ("LINEBELOW", (0, 1), (-1, -1), 0.25, colors.lightgrey)]))
        yield table


def _evidence_item(e: dict[str, Any], s: _Styles) -> Paragraph:
    if e["kind"] == "audit":
        proof = e.get("proof") or {}
        ref = str(e["ref"])
        text = (f"Audit entry {_link('entry-' + ref, '#' + _t(ref))}: {_t(e['summary'])}; leaf hash "
                f"{_code(proof.get('leaf_hash', ''))}, {_link('entry-' + ref, 'inclusion proof')} of "
                f"{len(proof.get('proof', ()))} hashes.")
    elif e["kind"] == "config":
        text = f"Setting {_link(_setting_dest(str(e['ref'])), _code(e['summary']))}"
    else:
        text = f"State ({_code(e['ref'])}): {_t(e['summary'])}"
    return Paragraph(text, s.item, bulletText="\u2022")


def _checks(doc: dict[str, Any], s: _Styles) -> Iterator[Flowable]:
    yield Paragraph("Checks and evidence", s.h2)
    provisions_of = _provisions(doc)
    for c in doc["checks"]:
        head = [Paragraph(f"{_anchor(c['id'])}{_t(c['id'])} \u2014 {_t(c['title'])}: {_status(c['status'])}", s.h3),
                Paragraph(_t(c["reason"]), s.body)]
        provisions = provisions_of.get(c["id"])
        if provisions:
            head.append(Paragraph(f"<b>Provisions:</b> {_t(provisions)}", s.body))
        if c.get("remediation"):
            head.append(Paragraph(f"<b>Remediation:</b> {_t(c['remediation'])}", s.body))
        yield KeepTogether(head)
        if c["evidence"]:
            for e in c["evidence"]:
                yield _evidence_item(e, s)
        else:
            yield Paragraph("No evidence of the cited kinds yet.", s.body)


def _appendix(doc: dict[str, Any], s: _Styles) -> Iterator[Flowable]:
    settings = _settings(doc)
    if settings:
        yield Paragraph("Settings cited", s.h2)
        for name, (e, cited_by) in settings.items():
            by = ", ".join(_link(c, _t(c)) for c in cited_by)
            yield Paragraph(f"{_anchor(_setting_dest(name))}{_code(e['summary'])} (cited by {by})", s.body)
    yield Paragraph("Inclusion proofs", s.h2)
    for ref, (e, cited_by) in _audit_entries(doc).items():
        by = ", ".join(_link(c, _t(c)) for c in cited_by)
        yield Paragraph(f"{_anchor('entry-' + ref)}Entry #{_t(ref)} (cited by {by}): {_t(e['summary'])}", s.h3)
        yield Preformatted(_fixed_lines(json.dumps(e.get("proof", {}), indent=1)), s.mono)
    yield Paragraph("Checkpoint", s.h3)
    yield Preformatted(_fixed_lines(str(doc.get("checkpoint") or "")), s.mono)


class _NamedDestinationCanvas(Canvas):  # type: ignore[misc]
    """A canvas whose internal links name their target and whose targets are the document's named destinations.

    ReportLab resolves an internal link to an explicit page position and writes no name tree; here
    every link annotation carries ``/Dest (name)`` and the catalog gets ``/Names << /Dests ... >>``,
    so a reader (and a test) sees which check or entry a link goes to. A link to a name that was
    never placed is an error, not a dead link.
    """

    def __init__(self, *args: Any, pdf_date: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._linked: set[str] = set()
        if pdf_date:  # the report's own time, not the invariant mode's fixed 2000-01-01
            self.setDateFormatter(lambda *_: pdf_date)

    def linkRect(self, contents: str, destinationname: str, Rect: Any = None, addtopage: int = 1,
                 name: str | None = None, relative: int = 1, thickness: float = 0, color: Any = None,
                 dashArray: Any = None, **kw: Any) -> None:
        self._linked.add(destinationname)
        annotation = LinkAnnotation(Rect=self._absRect(Rect, relative), Contents=contents,
                                    Destination=PDFString(destinationname), Border="[0 0 0]")
        self._addAnnotation(annotation, name, addtopage)

    def save(self) -> None:
        placed = {n: d for n, d in self._destinations.items() if d.fmt is not None}
        missing = self._linked - set(placed)
        if missing:
            raise ValueError("the report links to destinations it never placed: " + ", ".join(sorted(missing)))
        names: list[Any] = []
        for n in sorted(placed, key=lambda k: k.encode("utf-8")):
            names += [PDFString(n), placed[n]]
        self._doc.Catalog.Names = PDFDictionary({"Dests": PDFDictionary({"Names": PDFArray(names)})})
        super().save()


def _pdf_date(generated_at: str) -> str:
    """The report's generation time as a PDF date string (UTC), or "" when it does not parse."""
    try:
        at = datetime.fromisoformat(generated_at).astimezone(UTC)
    except ValueError:
        return ""
    return at.strftime("D:%Y%m%d%H%M%S+00'00'")


def _footer(generated_at: str) -> Any:
    def draw(canvas: Canvas, template: SimpleDocTemplate) -> None:
        canvas.saveState()
        canvas.setFont("Helvetica", 7.5)
        canvas.drawString(template.leftMargin, 10 * mm, f"iotguard compliance report, generated {generated_at}")
        canvas.drawRightString(A4[0] - template.rightMargin, 10 * mm, f"page {canvas.getPageNumber()}")
        canvas.restoreState()
    return draw


def render_pdf(doc: dict[str, Any]) -> bytes:
    """The report as a PDF whose requirements link to their checks and whose checks link to their evidence.

    Args:
        doc: the report document (:func:`iotguard.hub.compliance.report`).

    Returns:
        The PDF file's bytes.
    """
    s = _Styles()
    out = io.BytesIO()
    pdf = SimpleDocTemplate(out, pagesize=A4, leftMargin=18 * mm, rightMargin=18 * mm, topMargin=16 * mm,
                            bottomMargin=18 * mm, title=f"iotguard compliance report {doc['generated_at']}",
                            author="iotguard", subject="ETSI EN 303 645, NIST IR 8259A, OWASP IoT Top 10",
                            creator="iotguard", invariant=True)
    story = [*_summary(doc, s), *_standards(doc, s), Spacer(0, 4 * mm), *_checks(doc, s), *_appendix(doc, s)]
    footer = _footer(str(doc["generated_at"]))
    pdf_date = _pdf_date(str(doc["generated_at"]))

    def canvas(*args: Any, **kwargs: Any) -> _NamedDestinationCanvas:
        return _NamedDestinationCanvas(*args, pdf_date=pdf_date, **kwargs)

    pdf.build(story, onFirstPage=footer, onLaterPages=footer, canvasmaker=canvas)
    return out.getvalue()
