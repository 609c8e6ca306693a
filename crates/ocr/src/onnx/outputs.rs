//! A run's outputs copied out of ONNX Runtime's values into a [`RunOutput`] (shared by plain
//! runs and IoBinding runs).

use crate::model::RunOutput;

/// A run's outputs copied out of ONNX Runtime (see [`RunOutput`]), checked to have `n` items.
pub(crate) fn copy_out(
    outputs: &ort::session::SessionOutputs<'_>,
    n: usize,
) -> Result<RunOutput, String> {
    let (main, indices) = match (outputs.get("scores"), outputs.get("indices")) {
        (Some(scores), Some(indices)) => (
            scores
                .try_extract_array::<f32>()
                .map_err(|e| e.to_string())?,
            Some(
                indices
                    .try_extract_array::<i64>()
                    .map_err(|e| e.to_string())?
                    .to_owned(),
            ),
        ),
        _ => (
            outputs[0]
                .try_extract_array::<f32>()
                .map_err(|e| e.to_string())?,
            None,
        ),
    };
    // Recognisers made before `space` was added have no such output (models/make_argmax.py).
    let space = match (&indices, outputs.get("space")) {
        (Some(_), Some(space)) => Some(
            space
                .try_extract_array::<f32>()
                .map_err(|e| e.to_string())?
                .to_owned(),
        ),
        _ => None,
    };
    for shape in [main.shape()]
        .into_iter()
        .chain(indices.as_ref().map(|a| a.shape()))
    {
        if shape.first() != Some(&n) {
            return Err(format!(
                "model returned batch {:?} for {n} inputs",
                shape.first()
            ));
        }
    }
    Ok(RunOutput {
        main: main.to_owned(),
        indices,
        space,
    })
}
