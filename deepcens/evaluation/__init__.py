"""Evaluation: ``CellEvaluator`` (COCO bbox/segm AP + CTC SEG/DET/OP_CSB) and reports."""
from deepcens.evaluation.evaluator import EVALUATOR_REGISTRY, CellEvaluator, build_evaluator
from deepcens.evaluation.reports import format_summary_table, write_reports

__all__ = ["EVALUATOR_REGISTRY", "CellEvaluator", "build_evaluator", "format_summary_table", "write_reports"]
