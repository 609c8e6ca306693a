//! The recorded device (model outputs recorded from a real run, answered again without the
//! models) and the host pool: neither may change a single result.

mod common;

use common::*;
use ocrfleet_ocr::{Engine, EngineConfig, ImageText, OcrError, Stage};

/// Per image: its lines' text, box and score.
type Lines = Vec<Vec<(String, [[i32; 2]; 4], f32)>>;

fn lines(r: &[Result<ImageText, OcrError>]) -> Lines {
    r.iter()
        .map(|t| {
            t.as_ref()
                .expect("fixture recognised")
                .lines
                .iter()
                .map(|l| (l.text.clone(), l.bbox, l.score))
                .collect()
        })
        .collect()
}

#[test]
fn replay_reproduces_the_real_run_and_never_runs_a_model() {
    let images = fixture_images();
    let refs: Vec<&[u8]> = images.iter().map(|(_, b)| b.as_slice()).collect();
    let mut e = engine(2);
    e.record();
    let real = lines(&e.recognize_bytes(&refs));
    let recorded = e.replay();
    assert!(
        recorded > refs.len(),
        "det, cls and rec items recorded: {recorded}"
    );
    // Another batching than the recording's: outputs are kept per item.
    e.config_mut().det.batch_size = 3;
    let replayed = lines(&e.recognize_bytes(&refs));
    assert_eq!(real, replayed);
    assert!(
        real.iter().map(Vec::len).sum::<usize>() > 50,
        "the fixtures have text"
    );

    // An image the recording never saw cannot be answered: the models are not run.
    let (_, first) = &images[0];
    let unseen = image::load_from_memory(first).unwrap().fliph().to_rgb8();
    let r = e.recognize(&[unseen]);
    match &r[0] {
        Err(OcrError::Inference { stage, message }) => {
            assert_eq!(*stage, Stage::Detect);
            assert!(message.contains("not recorded"), "{message}");
        }
        other => panic!("expected a recording miss, got {other:?}"),
    }
    e.stop_replay();
    let (_, first) = &images[0];
    assert!(e.recognize_bytes(&[first.as_slice()])[0].is_ok());
}

#[test]
fn the_host_pool_size_does_not_change_the_text() {
    let images = fixture_images();
    let refs: Vec<&[u8]> = images.iter().map(|(_, b)| b.as_slice()).collect();
    let run = |host_threads: usize| {
        let mut cfg = EngineConfig::with_models_dir(repo_root().join("models"));
        cfg.intra_threads = 2;
        cfg.host_threads = host_threads;
        let e = Engine::new(cfg).expect("engine starts (run models/fetch.sh first)");
        lines(&e.recognize_bytes(&refs))
    };
    assert_eq!(run(1), run(3));
}
