"""Post-call analysis: an assistant's plan (summary, structured data, success) run on a
finished call's stored transcript by the gateway's OpenAI-compatible model, outside the
call, as owed work in MongoDB (`CallAnalyst`); the result is stored on the call and
announced through `AnalysisEvents`."""

from gateway.analysis.analyst import AnalysisEvents, CallAnalyst
from gateway.analysis.llm import AnalysisLLM, OpenAIAnalysisLLM, analysis_llm, analysis_model

__all__ = [
    "AnalysisEvents",
    "AnalysisLLM",
    "CallAnalyst",
    "OpenAIAnalysisLLM",
    "analysis_llm",
    "analysis_model",
]
