"""The training half: tf.data input from the TFDS dataset, the CNN-LSTM, training, evaluation, export, prediction."""
