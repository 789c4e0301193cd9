"""Run geoimplicit Processing algorithms in a real headless QGIS (run by /usr/bin/python3, not the venv).

    /usr/bin/python3 tests/qgis_harness.py JOBS.json RESULTS.json

JOBS.json: {"plugin_dir": ..., "executable": "" | path, "jobs": [{"id", "alg", "params", "load": [names],
"cancel_after": N, "env": {...}}]}. Parameter values are JSON; a value {"load": path} in "params" is passed as
an output definition that loads into the project (so post-processors run). RESULTS.json gets, per job: ok,
error (the exception's message), results, progress (every value given to setProgress), texts, commands,
infos, seconds, and for every layer to load on completion its CRS, size, extent and renderer after the
plugin's post-processor ran. Ends with os._exit (exitQgis() after Processing crashes on Debian's 3.22).
"""

import json
import os
import sys
import time
import traceback

sys.path.append("/usr/share/qgis/python/plugins")


def main(jobs_path, results_path):
    spec = json.load(open(jobs_path))
    sys.path.insert(0, spec["plugin_dir"])
    from qgis.core import (
        QgsApplication,
        QgsProcessingContext,
        QgsProcessingFeedback,
        QgsProcessingOutputLayerDefinition,
        QgsProcessingUtils,
        QgsProject,
    )

    app = QgsApplication([], False)
    app.initQgis()
    from processing.core.Processing import Processing
    from processing.core.ProcessingConfig import ProcessingConfig

    Processing.initialize()
    import processing
    from geoimplicit_qgis.provider import SETTING_EXECUTABLE, GeoImplicitProvider

    provider = GeoImplicitProvider()
    out = {"registered": QgsApplication.processingRegistry().addProvider(provider)}
    out["algorithms"] = {
        a.id(): {"display": a.displayName(), "help": a.shortHelpString(), "group": a.group(),
                 "params": {d.name(): d.type() for d in a.parameterDefinitions()},
                 "outputs": {o.name(): o.type() for o in a.outputDefinitions()}}
        for a in provider.algorithms()
    }
    out["jobs"] = {}
    for job in spec["jobs"]:
        # set the value as a stale setting would be (the settings dialog itself refuses missing paths)
        ProcessingConfig.settings[SETTING_EXECUTABLE].value = job.get("executable", spec.get("executable", ""))
        saved_env = dict(os.environ)
        os.environ.update(job.get("env", {}))
        record = {"progress": [], "texts": [], "commands": [], "infos": [], "errors": [], "layers": {}}
        feedback = QgsProcessingFeedback()
        cancel_after = job.get("cancel_after")

        def on_progress(value, record=record, feedback=feedback, cancel_after=cancel_after):
            record["progress"].append(value)
            if cancel_after is not None and len(record["progress"]) >= cancel_after:
                feedback.cancel()

        feedback.progressChanged.connect(on_progress)
        feedback.setProgressText = record["texts"].append
        feedback.pushCommandInfo = record["commands"].append
        feedback.pushInfo = record["infos"].append
        feedback.reportError = lambda text, fatalError=False, record=record: record["errors"].append(text)
        context = QgsProcessingContext()
        context.setProject(QgsProject.instance())
        params = {}
        for key, value in job["params"].items():
            if isinstance(value, dict) and "load" in value:
                value = QgsProcessingOutputLayerDefinition(value["load"], QgsProject.instance())
            params[key] = value
        t0 = time.monotonic()
        try:
            record["results"] = {k: (v if isinstance(v, (int, float, str, type(None))) else str(v))
                                 for k, v in processing.run(job["alg"], params, context=context,
                                                            feedback=feedback).items()}
            record["ok"] = True
        except Exception as exc:  # noqa: BLE001 - recorded for the test
            record["ok"] = False
            record["error"] = str(exc)
            record["error_type"] = type(exc).__name__
            record["traceback"] = traceback.format_exc()
        record["seconds"] = time.monotonic() - t0
        record["canceled"] = feedback.isCanceled()
        for path, details in context.layersToLoadOnCompletion().items():
            layer = QgsProcessingUtils.mapLayerFromString(path, context)
            info = {"name": details.name, "output": details.outputName, "valid": bool(layer and layer.isValid())}
            if layer is not None and layer.isValid():
                processor = details.postProcessor()
                if processor is not None:
                    processor.postProcessLayer(layer, context, feedback)
                info.update(crs=layer.crs().authid(), extent=[layer.extent().xMinimum(), layer.extent().yMinimum(),
                                                               layer.extent().xMaximum(), layer.extent().yMaximum()])
                if layer.type() == layer.RasterLayer:
                    renderer = layer.renderer()
                    info.update(width=layer.width(), height=layer.height(), bands=layer.bandCount(),
                                renderer=renderer.type(), post_processor=processor is not None)
                    if renderer.type() == "singlebandpseudocolor":
                        info.update(classification=[renderer.classificationMin(), renderer.classificationMax()])
                else:
                    info.update(features=layer.featureCount(), fields=[f.name() for f in layer.fields()])
            record["layers"][path] = info
        os.environ.clear()
        os.environ.update(saved_env)
        out["jobs"][job["id"]] = record
    with open(results_path, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    code = 0
    try:
        main(sys.argv[1], sys.argv[2])
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
