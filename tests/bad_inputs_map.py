"""Which tests exercise each case of docs/bad-inputs.md: the one place this is written down.

Each case number maps to a list of "tests/test_x.py::test_name" (the test function must exist:
tests/test_bad_inputs_map.py checks every entry and that every case of the document is here), or
to one string starting with "n/a: " (the input cannot reach cnnlab as built, with the reason) or
"open: " (cnnlab does not do what the case asks yet, with the reason; listed in the test's report).
"""

from __future__ import annotations

SCAN = "tests/test_scan.py"
DECODE = "tests/test_decode.py"
SOURCES = "tests/test_sources.py"
FAULTS = "tests/test_faults.py"
CKPT = "tests/test_checkpoint.py"
SERVE = "tests/test_serve.py"
EXPORT = "tests/test_export.py"
DETECT = "tests/test_detection.py"
SEGMENT = "tests/test_segmentation.py"
CLI = "tests/test_cli.py"
IMB = "tests/test_imbalance.py"
OP = "tests/test_operating_point.py"

CASES: dict[int, list[str] | str] = {
    # A. dataset structure
    1: [f"{SCAN}::test_case_01_root_missing_or_not_a_directory", f"{CLI}::test_data_check"],
    2: [f"{SCAN}::test_case_02_images_but_no_class_folders"],
    3: [f"{SCAN}::test_case_03_empty_class_fails_unless_allowed"],
    4: [f"{SCAN}::test_case_04_hidden_and_system_entries_ignored"],
    5: [f"{SCAN}::test_case_05_non_image_files_skipped_by_extension"],
    6: [f"{SCAN}::test_case_06_extensions_and_content_mismatch"],
    7: [f"{SCAN}::test_case_07_class_order_is_plain_sorted_like_torchvision"],
    8: [f"{SCAN}::test_case_08_train_and_val_class_sets_differ"],
    9: [f"{SCAN}::test_case_09_same_file_in_train_and_val_is_leakage"],
    10: [f"{SCAN}::test_case_10_symlink_outside_root_skipped"],
    # B. file-level decoding
    11: [
        f"{DECODE}::test_case_11_zero_byte_file",
        f"{SCAN}::test_cases_11_12_13_16_bad_files_listed_with_reasons",
    ],
    12: [
        f"{DECODE}::test_case_12_html_saved_as_jpg",
        f"{SCAN}::test_cases_11_12_13_16_bad_files_listed_with_reasons",
    ],
    13: [
        f"{DECODE}::test_case_13_truncated_jpeg",
        f"{SCAN}::test_cases_11_12_13_16_bad_files_listed_with_reasons",
        f"{SEGMENT}::test_corrupt_images_over_the_limit_or_with_strict_refuse_training",
    ],
    14: [f"{DECODE}::test_case_14_jpeg_with_bytes_after_eoi_is_accepted"],
    15: [
        f"{DECODE}::test_case_15_truncated_png",
        f"{DECODE}::test_case_15_png_bad_idat_crc",
        f"{DECODE}::test_case_15_png_bad_header_crc",
        f"{SEGMENT}::test_a_corrupt_image_is_skipped_reported_and_kept_out_of_the_recorded_splits",
        f"{DETECT}::test_skipped_images_are_limited_by_max_bad_fraction_and_strict",
        f"{DETECT}::test_evaluate_on_other_data_limits_skipped_images_as_training_does",
        f"{SEGMENT}::test_evaluate_on_other_data_limits_skipped_images_as_training_does",
        f"{CLI}::test_evaluate_on_other_data_limits_unreadable_images_with_its_own_options",
    ],
    16: [
        f"{DECODE}::test_case_16_decompression_bomb_rejected_before_decoding",
        f"{SCAN}::test_cases_11_12_13_16_bad_files_listed_with_reasons",
        f"{SERVE}::test_bad_uploads_get_their_status_and_the_server_keeps_answering",
    ],
    17: [f"{DECODE}::test_case_17_between_pillow_warning_and_error_is_our_error"],
    18: [
        f"{DECODE}::test_case_18_huge_photo_names_the_option",
        f"{SCAN}::test_case_18_images_over_the_pixel_limit_get_the_callers_hint",
        f"{SERVE}::test_serve_limits_are_options",
    ],
    19: [f"{DECODE}::test_case_19_exotic_format_not_allowed"],
    20: [f"{DECODE}::test_case_20_heic_and_avif_report_format_and_hint"],
    21: [f"{DECODE}::test_case_21_permission_denied_and_deleted"],
    22: [f"{DECODE}::test_case_22_transient_read_errors_are_retried"],
    # C. pixel content / modes
    23: [
        f"{DECODE}::test_case_23_exif_orientation_applied",
        f"{DECODE}::test_case_23_exif_orientation_6_jpeg",
    ],
    24: [
        f"{DECODE}::test_case_24_grayscale_l_and_la",
        f"{DECODE}::test_case_24_l_output_is_itu_601_luma",
    ],
    25: [
        f"{DECODE}::test_case_25_rgba_composited_on_background",
        f"{DECODE}::test_case_25_palette_with_transparency",
    ],
    26: [f"{DECODE}::test_case_26_cmyk_jpeg"],
    27: [f"{DECODE}::test_case_27_16bit_scaled_not_saturated"],
    28: [f"{DECODE}::test_case_28_float_images", f"{DECODE}::test_case_28_int32_images"],
    29: [
        f"{DECODE}::test_case_29_animated_gif_first_frame",
        f"{DECODE}::test_case_29_multipage_tiff_first_page",
        f"{SCAN}::test_cases_29_30_animated_tiny_and_distributions",
    ],
    30: [
        f"{DECODE}::test_case_30_tiny_image_accepted",
        f"{SCAN}::test_cases_29_30_animated_tiny_and_distributions",
    ],
    # D. labels
    31: [
        "tests/test_train_e2e.py::test_api_errors_name_what_is_wrong",
        f"{SOURCES}::test_csv_rules",
    ],
    32: [f"{SOURCES}::test_case_32_csv_row_whose_file_is_missing_is_skipped_and_reported"],
    33: [
        f"{SOURCES}::test_csv_rules",
        "tests/test_coco.py::test_a_file_name_outside_the_image_folder_is_refused_naming_the_image",
        "tests/test_coco.py::test_a_file_name_linking_out_of_the_image_folder_is_refused",
    ],
    34: [
        f"{SOURCES}::test_case_34_labels_that_differ_only_in_case_or_spaces_are_refused",
        f"{SOURCES}::test_case_34_class_names_in_two_unicode_forms_are_refused",
    ],
    35: [
        f"{SOURCES}::test_csv_rules",
        "tests/test_metrics_io.py::test_case_35_a_column_of_class_names_and_indices_is_refused_naming_rows",
    ],
    36: [
        f"{SOURCES}::test_csv_rules",
        f"{SCAN}::test_duplicates_and_conflicting_labels",
        f"{SOURCES}::test_case_36_one_file_under_two_spellings_is_one_row",
    ],
    37: [
        f"{SOURCES}::test_case_37_too_few_samples_for_a_stratified_split_names_the_counts",
        f"{SOURCES}::test_case_37_the_class_with_too_few_images_is_named_not_numbered",
    ],
    38: [
        f"{DETECT}::test_coco_label_checks",
        "tests/test_coco.py::test_annotation_of_an_unknown_image_is_skipped_and_counted_by_both_tasks",
    ],
    39: [f"{DETECT}::test_check_boxes_drops_and_clips", f"{DETECT}::test_coco_label_checks"],
    40: [f"{DETECT}::test_coco_label_checks"],
    41: [f"{DETECT}::test_coco_label_checks"],
    42: [
        "tests/test_segmentation.py::test_bad_masks_are_named",
        f"{DETECT}::test_a_yolo_label_of_no_class_is_refused_naming_file_line_and_range",
        f"{DETECT}::test_yolo_class_without_class_names_and_integral_floats",
    ],  # classification labels are mapped through the class list: only mask values and YOLO
    # class indices can be out of range
    # E. checkpoints and models
    43: [
        "tests/test_transfer.py::test_other_class_count_and_channels_reinitialise_the_head_and_adapt_the_first_conv",
        "tests/test_train_e2e.py::test_cli_finetune_from_a_run_with_other_classes_and_channels",
    ],
    44: [
        f"{FAULTS}::test_case_44_resume_with_different_classes_fails",
        f"{FAULTS}::test_cases_44_45_48_checkpoint_that_does_not_fit",
    ],
    45: [
        f"{FAULTS}::test_cases_44_45_48_checkpoint_that_does_not_fit",
        "tests/test_transfer.py::test_a_source_of_another_architecture_fails_listing_the_keys",
    ],
    46: [
        f"{FAULTS}::test_case_46_corrupt_checkpoint_is_named_and_resume_falls_back_loudly",
        f"{FAULTS}::test_case_46_a_corrupt_best_checkpoint_is_named_not_replaced_by_another",
        f"{CKPT}::test_truncated_weights_are_reported_as_corrupt",
        f"{CKPT}::test_manifest_verification_falls_back_to_previous",
    ],
    47: [
        f"{FAULTS}::test_case_47_a_checkpoint_with_pickled_code_is_refused_never_retried_unsafely",
        f"{CKPT}::test_pickle_that_would_run_a_command_is_refused",
    ],
    48: [f"{FAULTS}::test_cases_44_45_48_checkpoint_that_does_not_fit"],
    49: [
        f"{FAULTS}::test_case_49_resume_of_missing_run",
        "tests/test_resume_tasks.py::test_a_finished_run_has_nothing_to_resume_and_is_left_as_it_was",
    ],
    # F. training run-time
    50: [f"{FAULTS}::test_case_50_nan_loss_names_epoch_step_and_files"],
    51: [
        f"{FAULTS}::test_case_51_disk_full_while_saving_keeps_the_previous_checkpoint",
        f"{CKPT}::test_atomic_write_keeps_old_file_when_the_writer_fails",
    ],
    52: [
        f"{FAULTS}::test_case_52_sigkill_at_random_moments_then_resume_is_bit_identical",
        f"{CKPT}::test_old_checkpoints_are_pruned_and_stale_temporaries_cleaned",
    ],
    53: [f"{FAULTS}::test_case_53_sigterm_saves_and_exits_nonzero"],
    54: [f"{FAULTS}::test_case_54_batch_larger_than_dataset_fails_before_training"],
    55: [f"{FAULTS}::test_case_55_a_killed_loader_worker_is_one_line_naming_shared_memory"],
    56: [f"{FAULTS}::test_case_56_out_of_memory_is_one_line_and_never_shrinks_the_batch"],
    # G. export and serving
    57: [
        f"{EXPORT}::test_export_uses_eval_mode_and_restores_the_mode",
        f"{EXPORT}::test_onnx_matches_pytorch_for_every_model",
    ],
    58: [
        f"{EXPORT}::test_onnx_metadata_round_trip",
        f"{EXPORT}::test_predict_onnx_matches_api_predict",
    ],
    59: [
        f"{SERVE}::test_body_is_read_in_chunks_and_refused_early",
        f"{SERVE}::test_live_server_refuses_a_declared_oversize_body_without_reading_it",
    ],
    60: [
        f"{SERVE}::test_bad_uploads_get_their_status_and_the_server_keeps_answering",
        f"{SERVE}::test_other_request_shapes_are_refused",
    ],
    61: [f"{SERVE}::test_client_file_names_never_become_paths"],
    62: [
        f"{SERVE}::test_saturated_server_answers_503_then_recovers",
        f"{SERVE}::test_twenty_concurrent_uploads_wait_their_turn_and_all_succeed",
        f"{SERVE}::test_a_waiting_upload_gets_the_slot_a_finished_one_frees",
    ],
    63: [
        "tests/test_precision.py::test_evaluate_leaves_the_run_byte_identical_and_reproduces_its_metrics",
        "tests/test_segmentation.py::test_folder_layout_trains_evaluates_and_predicts",
        "tests/test_detection.py::test_format_round_trip_train_evaluate",
        "tests/test_video_train.py::test_train_then_evaluate_reproduces_test_metrics",
        f"{OP}::test_evaluate_chooses_on_validation_measures_on_test_and_only_adds_a_file",
    ],
    64: [
        f"{SOURCES}::test_case_64_a_dataset_with_one_class_is_refused_naming_it",
        f"{CLI}::test_train_refuses_a_one_class_folder_naming_the_class",
    ],
    65: ["tests/test_messages.py::test_every_suggested_flag_exists_on_the_commands_that_print_it"],
    66: [
        "tests/test_precision.py::test_inference_defaults_to_fp32_on_cpu_whatever_training_used",
        "tests/test_precision.py::test_predict_evaluate_and_the_model_agree_on_probabilities",
        "tests/test_precision.py::test_the_web_explorer_answers_as_predict_does_at_the_same_precision",
        "tests/test_export.py::test_predict_onnx_matches_api_predict",
    ],
    67: "n/a: cnnlab has no multi-label classification (a CSV has one label per row)",
    68: [
        f"{IMB}::test_a_bad_weights_file_is_refused_naming_the_file_and_class",
        f"{IMB}::test_cli_names_the_bad_weights_file_in_one_line",
    ],
    69: [f"{IMB}::test_a_run_records_its_class_balance_and_says_it"],
    70: "n/a: cnnlab has no out-of-domain score at prediction time",
    71: "n/a: cnnlab has no shared hyper-parameter tuning store",
    72: ["tests/test_resume_tasks.py::test_resume_of_another_tasks_run_is_refused_naming_both"],
    73: [
        f"{OP}::test_bad_targets_are_refused",
        f"{OP}::test_cli_errors_are_one_line",
        f"{OP}::test_operating_point_refusals",
    ],
    74: [f"{OP}::test_operating_point_refusals"],
    75: [
        f"{OP}::test_an_operating_point_chosen_for_other_weights_is_refused_by_predict",
        f"{OP}::test_a_second_operating_point_needs_replace_and_the_first_stays_on_record",
    ],
}
