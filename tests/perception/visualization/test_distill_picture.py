"""The distilled student's BEV maps beside its teacher's (perception/visualization/distill.py)
and the report's section for it."""

from __future__ import annotations

import pytest

from perception.evaluation.report import ReportData, render_report
from perception.visualization.distill import distill_figure_png
from tests.perception.models.helpers import synthetic_batch
from tests.perception.models.test_distill import student_and_teacher

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_figure_is_drawn_and_leaves_the_model_as_it_was():
    config, student, teacher = student_and_teacher()
    student.distiller.attach_teacher(teacher)
    student.train()
    png = distill_figure_png(student, synthetic_batch(config, batch_size=1))
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert student.training  # its mode restored
    assert all(p.grad is None for p in student.parameters())  # drawn without gradients


def test_without_a_teacher_there_is_nothing_to_draw():
    config, student, _ = student_and_teacher()
    with pytest.raises(ValueError, match="no distiller with a teacher"):
        distill_figure_png(student, synthetic_batch(config, batch_size=1))


def test_the_report_shows_the_picture_or_why_not_and_nothing_without_a_teacher():
    png = b"\x89PNG\r\n\x1a\nfake"
    drawn = render_report(ReportData(title="t", metrics=None, distill_picture=png))
    assert "Distillation: the student" in drawn and "data:image/png;base64," in drawn
    failed = render_report(ReportData(title="t", metrics=None, distill_note="not drawn: boom"))
    assert "not drawn: boom" in failed
    assert "Distillation" not in render_report(ReportData(title="t", metrics=None))
