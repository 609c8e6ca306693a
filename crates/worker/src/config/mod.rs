//! Worker configuration: one typed struct, loaded from a TOML file, then `OCRFLEET_*`
//! environment variables, then command-line flags (each later source wins).
//!
//! Every setting is declared once, in the `settings!` table (`table.rs`), which generates the clap
//! flags (so `ocrfleet worker --help` lists each flag with its environment variable), the TOML
//! keys (the flag's name), and [`REFERENCE`], from which deploy/docs/configuration.md's table is
//! made (`ocrfleet worker --print-reference`; a test checks that the document agrees).
//!
//! The module's parts: `table` (the settings, a struct pair per section), `values` (the types a
//! setting's value needs: durations, lists, secrets), `resolve` (the typed configuration made
//! from them) and `reference` (the Markdown reference, defaults for other commands, unknown
//! environment variables).

mod reference;
mod resolve;
mod table;
mod values;

pub use reference::{default_of, reference_markdown, unknown_env, Setting, OTHER_ENV};
pub use resolve::{replay_key, EsConfig, FetchConfig, KafkaConfig, PdfConfig, WorkerConfig};
pub use table::*;
pub use values::{HumanDuration, List, Secret};

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ipnet::IpNet;
    use ocrfleet_ocr::{EngineConfig, ModelSet};

    use super::*;

    /// The table's engine defaults are the engine's own (the table's text is what `--help` and
    /// the reference show, so it has to be written there; this keeps the two from drifting).
    #[test]
    fn the_engine_defaults_in_the_table_are_the_engines() {
        let c = WorkerConfig::load(WorkerArgs::default(), None).unwrap();
        let e = EngineConfig::default();
        assert_eq!(c.engine.det.limit_side_len, e.det.limit_side_len);
        assert_eq!(c.engine.det.upscale_to, e.det.upscale_to);
        assert_eq!(c.engine.max_pages, e.max_pages);
        assert_eq!(c.engine.rec.spaces.enabled, e.rec.spaces.enabled);
        assert_eq!(c.engine.model_set, e.model_set);
        assert_eq!(c.engine.fused, e.fused);
        assert_eq!(c.engine.fp16, e.fp16);
        assert_eq!(c.engine.u8_input, e.u8_input);
        assert_eq!(c.engine.io_binding, e.io_binding);
        assert_eq!(c.engine.device, e.device);
        assert_eq!(c.engine.models_dir, e.models_dir);
        assert_eq!(c.engine.intra_threads, e.intra_threads);
        assert_eq!(c.engine.host_threads, e.host_threads);
    }

    /// Calls in flight: one per runner on CPU, two on CUDA, and two on the test-only simulated
    /// device, which stands for a GPU.
    #[test]
    fn a_simulated_device_is_fed_as_a_gpu_is() {
        let mut c = WorkerConfig::load(WorkerArgs::default(), None).unwrap();
        c.engine.streams = 2;
        assert_eq!(c.engine_lanes(), 2);
        c.test_device_costs = Some(ocrfleet_ocr::device::Costs::default());
        assert_eq!(c.engine_lanes(), 4);
        c.test_device_costs = None;
        c.engine.device = ocrfleet_ocr::Device::Cuda(0);
        assert_eq!(c.engine_lanes(), 4);
    }

    #[test]
    fn defaults_resolve() {
        let c = WorkerConfig::load(WorkerArgs::default(), None).unwrap();
        assert_eq!(c.kafka.topic, "ocr.requests");
        assert_eq!(c.kafka.dlq_topic, "ocr.requests.dlq");
        assert_eq!(c.max_messages, 1000);
        assert_eq!(c.linger, Duration::from_millis(100));
        assert_eq!(c.fetch.max_bytes, 20 * 1024 * 1024);
        assert_eq!(c.fetch.concurrency, 64);
        assert!(c.fetch.allow.is_empty());
        assert_eq!(c.memory_budget, 2 * 1024 * 1024 * 1024);
    }

    #[test]
    fn flags_beat_file_beat_defaults() {
        let dir = std::env::temp_dir().join(format!("ocrfleet-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("w.toml");
        std::fs::write(&f, "topic = \"from-file\"\ngroup = \"g-file\"\nfetch-allow = [\"127.0.0.0/8\"]\nlinger = \"250ms\"\n").unwrap();
        let cli = WorkerArgs {
            kafka: KafkaArgs {
                topic: Some("from-flag".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let c = WorkerConfig::load(cli, Some(&f)).unwrap();
        assert_eq!(c.kafka.topic, "from-flag");
        assert_eq!(c.kafka.group, "g-file");
        assert_eq!(c.kafka.dlq_topic, "from-flag.dlq");
        assert_eq!(c.linger, Duration::from_millis(250));
        assert_eq!(c.fetch.allow, vec!["127.0.0.0/8".parse::<IpNet>().unwrap()]);
    }

    #[test]
    fn model_set_and_fp16_reach_the_engine() {
        let c = WorkerConfig::load(WorkerArgs::default(), None).unwrap();
        assert_eq!(
            (c.engine.model_set, c.engine.fp16, c.engine.fused),
            (ModelSet::V4DetV6Rec, false, true)
        );
        let f = std::env::temp_dir().join(format!("ocrfleet-cfg-fp16-{}.toml", std::process::id()));
        std::fs::write(&f, "models = \"v6\"\nfp16 = true\nfused-graphs = false\n").unwrap();
        let c = WorkerConfig::load(WorkerArgs::default(), Some(&f)).unwrap();
        assert_eq!(
            (c.engine.model_set, c.engine.fp16, c.engine.fused),
            (ModelSet::V6, true, false)
        );
        let r = |flag: &str| REFERENCE.iter().find(|r| r.flag == flag).unwrap().env;
        assert_eq!(
            (r("models"), r("fp16")),
            ("OCRFLEET_MODELS", "OCRFLEET_FP16")
        );
    }

    #[test]
    fn toml_keys_are_the_flag_names_and_lists_take_a_string_too() {
        for r in REFERENCE {
            // A wrong type is fine here; an unknown key is not.
            if let Err(e) = toml::from_str::<WorkerArgs>(&format!("{} = \"x\"", r.flag)) {
                assert!(!e.to_string().contains("unknown field"), "{}: {e}", r.flag);
            }
        }
        let a: WorkerArgs = toml::from_str("kafka-option = \"a=b,c=d\"").unwrap();
        assert_eq!(
            a.kafka_connection.kafka_options.unwrap().0,
            vec!["a=b", "c=d"]
        );
        let a: WorkerArgs =
            toml::from_str("kafka-option = [\"a=b\"]\nfetch-allow = \"10.0.0.0/8\"").unwrap();
        assert_eq!(a.kafka_connection.kafka_options.unwrap().0, vec!["a=b"]);
        assert_eq!(
            a.fetch.fetch_allow.unwrap().0,
            vec!["10.0.0.0/8".parse::<IpNet>().unwrap()]
        );
        assert!(toml::from_str::<WorkerArgs>("fetch-allow = \"nonsense\"").is_err());
    }

    #[test]
    fn unknown_environment_settings_are_named() {
        let vars = [
            ("OCRFLEET_MODEL_SET", "v6"),
            ("OCRFLEET_MODELS", "v6"),
            ("OCRFLEET_FP16", "true"),
            ("OCRFLEET_LOG_FORMAT", "json"),
            ("OCRFLEET_CONFIG", "/etc/ocrfleet/ocrfleet.toml"),
            ("PATH", "/bin"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        assert_eq!(unknown_env(vars), vec!["OCRFLEET_MODEL_SET"]);
    }

    #[test]
    fn kafka_options_beat_client_defaults_but_not_owned_settings() {
        let mut k = WorkerConfig::load(WorkerArgs::default(), None)
            .unwrap()
            .kafka;
        k.options = vec![
            ("session.timeout.ms".into(), "45000".into()),
            ("enable.auto.commit".into(), "true".into()),
            ("bootstrap.servers".into(), "other:9092".into()),
        ];
        let c = k.client_config_with(
            &[("session.timeout.ms", "10000".into())],
            &[("enable.auto.commit", "false".into())],
        );
        assert_eq!(c.get("session.timeout.ms"), Some("45000"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("bootstrap.servers"), Some("other:9092"));
        assert_eq!(k.client_config().get("enable.auto.commit"), Some("true"));
    }

    /// A switch is on when given bare, and takes a value like every other flag; a flag that
    /// is not a switch still needs its value.
    #[test]
    fn switches_may_be_given_bare_or_with_a_value() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            worker: WorkerArgs,
        }
        let a = Cli::try_parse_from([
            "w",
            "--fp16",
            "--fused-graphs",
            "false",
            "--word-spaces=false",
            "--topic",
            "t",
        ])
        .unwrap()
        .worker;
        assert_eq!(
            (a.engine.fp16, a.engine.fused_graphs, a.engine.word_spaces),
            (Some(true), Some(false), Some(false))
        );
        assert_eq!(a.kafka.topic.as_deref(), Some("t"));
        assert!(Cli::try_parse_from(["w", "--topic"]).is_err());
        assert!(Cli::try_parse_from(["w", "--fp16", "maybe"]).is_err());
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        assert!(toml::from_str::<WorkerArgs>("topc = \"x\"").is_err());
    }

    #[test]
    fn secrets_are_not_printed() {
        let s = Secret::from("hunter2".to_owned());
        assert!(!format!("{s:?}").contains("hunter2"));
        let c = WorkerConfig::load(
            WorkerArgs {
                es: EsArgs {
                    es_password: Some(s),
                    ..Default::default()
                },
                ..Default::default()
            },
            None,
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn every_default_parses() {
        WorkerArgs::default().settle().unwrap();
        for r in REFERENCE {
            assert!(r.env.starts_with("OCRFLEET_"), "{}", r.env);
        }
    }
}
