//! `ocrfleet worker`.

use std::path::PathBuf;
use std::process::ExitCode;

use ocrfleet_worker::config::reference_markdown;
use ocrfleet_worker::{WorkerArgs, WorkerConfig};

#[derive(clap::Args)]
pub struct WorkerCmd {
    /// TOML file with settings (keys are the flag names); flags and OCRFLEET_* variables win.
    #[arg(long, env = "OCRFLEET_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the settings reference as a Markdown table and exit.
    #[arg(long)]
    pub print_reference: bool,
    /// Test-only: inject an engine fault (`fail:AFTER_IMAGES:SECONDS`, `exit:AFTER_IMAGES`, or
    /// `panic|abort|hang:WIDTHxHEIGHT`).
    #[arg(long, hide = true)]
    pub test_engine_fault: Option<ocrfleet_ocr::FaultPlan>,
    /// Test-only: a prepare task panics (in its decode stage) on a URL containing this text.
    #[arg(long, hide = true)]
    pub test_prepare_panic: Option<String>,
    /// Test-only: the PDF renderer children abort on a document containing
    /// `%ocrfleet-test-abort` and hang on one containing `%ocrfleet-test-hang`.
    #[arg(long, hide = true)]
    pub test_pdf_faults: bool,
    /// Test-only: the engine runs on a SIMULATED device whose runs cost what this JSON file
    /// says (as `bench ocr --device-costs`; each input runs once on the real models and is
    /// recorded, later runs of it are the simulated device's), to show the worker end to end
    /// keeping a device busy (tests/bench/e2e.py --device-costs).
    #[arg(long, hide = true)]
    pub test_device_costs: Option<PathBuf>,
    /// Test-only: multiplies the costs of --test-device-costs.
    #[arg(long, hide = true, default_value_t = 1.0)]
    pub test_device_scale: f64,
    #[command(flatten)]
    pub settings: WorkerArgs,
}

pub fn run_worker(cmd: WorkerCmd) -> anyhow::Result<ExitCode> {
    if cmd.print_reference {
        print!("{}", reference_markdown());
        return Ok(ExitCode::SUCCESS);
    }
    let mut cfg = WorkerConfig::load(cmd.settings, cmd.config.as_deref())?;
    for name in ocrfleet_worker::config::unknown_env(std::env::vars()) {
        tracing::warn!(
            variable = %name,
            "{name} is not a worker setting and is ignored (see `ocrfleet worker --print-reference`)"
        );
    }
    if let Some(plan) = cmd.test_engine_fault {
        tracing::warn!(?plan, "test-only engine fault injection is on");
        cfg.engine.fault = Some(plan);
    }
    if cmd.test_pdf_faults {
        tracing::warn!("test-only PDF renderer fault injection is on");
        cfg.pdf.test_faults = true;
    }
    if let Some(p) = &cmd.test_device_costs {
        let costs = crate::bench::read_costs(p)?.scaled(cmd.test_device_scale);
        tracing::warn!(?costs, "test-only: the engine runs on a SIMULATED device (each input on the real models once, recorded, then answered from the recording after the time the costs say)");
        cfg.test_device_costs = Some(costs);
    }
    if let Some(s) = cmd.test_prepare_panic {
        tracing::warn!(url_contains = %s, "test-only prepare panic injection is on");
        cfg.test_prepare_panic = Some(s);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match rt.block_on(ocrfleet_worker::run(cfg, ocrfleet_worker::termination())) {
        Ok(_) => Ok(ExitCode::SUCCESS),
        // The cause is logged by the worker; exit non-zero so that the pod is restarted.
        Err(e) => {
            eprintln!("error: {e:#}");
            Ok(ExitCode::from(1))
        }
    }
}
