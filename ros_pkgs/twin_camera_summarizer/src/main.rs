//! `camera_summarizer`: sensor_msgs/Image on `camera/image_raw` and sensor_msgs/CameraInfo on
//! `camera/camera_info` -> twin_msgs/PerceptionSummary on `perception/objects/camera`. The
//! pipeline is `twinlink_vehicle::camera`; this file only connects it to ROS. A missing or
//! unusable model is not fatal: the node warns, counts each image it cannot process, and
//! tries to load the model again every `model_retry_period` seconds.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::task::LocalSpawnExt;
use futures::StreamExt;
use tracing::{info, warn};
use twin_node_support::{now_us, qos, run_node, subscribe_cdr, SummaryOutput};
use twinlink_msgs::sensor_msgs::msg::{CameraInfo, Image};
use twinlink_vehicle::camera::{self, CameraConfig, CameraSummarizer, OnnxDetector};
use twinlink_vehicle::markers::rgba;

struct Detector {
    loaded: Option<OnnxDetector>,
    next_attempt: Instant,
    retry: Duration,
}

fn main() {
    run_node(
        "camera_summarizer",
        camera::parameters(),
        |node, params, spawner| {
            let config = CameraConfig::from_params(params).map_err(anyhow::Error::msg)?;
            let info_timeout_us = (params.f64("camera_info_timeout") * 1e6) as u64;
            let output = Rc::new(RefCell::new(SummaryOutput::new(
                node,
                "perception/objects/camera",
                params.bool("publish_debug_markers"),
                rgba(0.2, 0.9, 0.3, 0.5),
                &config.sensor_id,
            )?));
            let summarizer = CameraSummarizer::new(config);
            let detector = Rc::new(RefCell::new(Detector {
                loaded: None,
                next_attempt: Instant::now(),
                retry: Duration::from_secs_f64(params.f64("model_retry_period")),
            }));
            let load = {
                let detector = detector.clone();
                let path = summarizer.config().model_path.clone();
                move |summarizer: &CameraSummarizer| -> Result<(), camera::ModelError> {
                    let mut d = detector.borrow_mut();
                    if d.loaded.is_some() || Instant::now() < d.next_attempt {
                        return Ok(());
                    }
                    d.next_attempt = Instant::now() + d.retry;
                    let model = summarizer.load_detector()?;
                    info!(model = %path, width = model.width, height = model.height, "detector loaded");
                    d.loaded = Some(model);
                    Ok(())
                }
            };
            if let Err(e) = load(&summarizer) {
                warn!(error = %e, "no detector yet; images are counted as refused until it loads");
            }
            let summarizer = Rc::new(RefCell::new(summarizer));

            let latest_info: Rc<RefCell<Option<(CameraInfo, u64)>>> = Rc::default();
            let mut infos =
                subscribe_cdr::<CameraInfo>(node, "camera/camera_info", qos::sensor_data())?;
            let (info_store, info_output) = (latest_info.clone(), output.clone());
            spawner.spawn_local(async move {
                while let Some(received) = infos.next().await {
                    match received.message {
                        Ok(info) => *info_store.borrow_mut() = Some((info, received.arrived_us)),
                        Err(e) => info_output.borrow_mut().refusals.refuse(e.kind(), &e),
                    }
                }
            })?;

            let mut images = subscribe_cdr::<Image>(node, "camera/image_raw", qos::sensor_data())?;
            let image_output = output.clone();
            spawner.spawn_local(async move {
                while let Some(received) = images.next().await {
                    let mut out = image_output.borrow_mut();
                    let Some(image) = out.refusals.accept(received.message) else {
                        continue;
                    };
                    // The image itself first: a bad image is reported as such, model or not.
                    if let Err(e) = camera::ImageView::new(&image) {
                        out.refusals.refuse(e.kind(), &e);
                        continue;
                    }
                    let info = latest_info.borrow().clone();
                    let Some((info, _)) =
                        info.filter(|(_, at)| now_us().saturating_sub(*at) <= info_timeout_us)
                    else {
                        out.refusals.refuse(
                            "no_camera_info",
                            &"no CameraInfo within camera_info_timeout",
                        );
                        continue;
                    };
                    let mut summarizer = summarizer.borrow_mut();
                    if let Err(e) = load(&summarizer) {
                        out.refusals.refuse(e.kind(), &e);
                        continue;
                    }
                    let mut d = detector.borrow_mut();
                    let Some(model) = d.loaded.as_mut() else {
                        out.refusals
                            .refuse("model_missing", &"the detector is not loaded yet");
                        continue;
                    };
                    match summarizer.summarize(&image, &info, model) {
                        Ok((summary, _)) => out.publish(summary, received.arrived_us),
                        Err(e) => out.refusals.refuse(e.kind(), &e),
                    }
                }
            })?;

            let mut report = node
                .create_wall_timer(Duration::from_secs(1))
                .map_err(|e| anyhow::anyhow!("diagnostics timer: {e}"))?;
            spawner.spawn_local(async move {
                while report.tick().await.is_ok() {
                    output.borrow_mut().report();
                }
            })?;
            Ok(())
        },
    );
}
